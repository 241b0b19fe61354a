"""The grid tick (DESIGN 4): park at the close, re-send attempts that are due and did not run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from retry_pipeline.model import Dispatch
from retry_pipeline.service.closing import park_if_closed
from retry_pipeline.service.context import Deps
from retry_pipeline.service.outcomes import relay
from retry_pipeline.service.receipts import relay_receipts

log = logging.getLogger(__name__)


@dataclass
class TickResult:
    """What one grid tick did."""

    parked: int = 0
    dispatched: list[Dispatch] = field(default_factory=list)
    relayed: int = 0


def tick(deps: Deps) -> TickResult:
    """Park at the close, release at 08:30 (R11, R13), re-send what is due, relay the outbox."""
    now = deps.clock.now()
    result = TickResult()
    try:
        result.parked = park_if_closed(deps, now)
    except Exception:  # e.g. a lock or statement timeout: the next tick parks them
        log.exception("could not park at the close; the next tick will")
    with deps.store.unit() as u:  # set-based: one statement marks what is due and not in flight
        result.dispatched = u.chains.dispatch_due(now, now - deps.step)
    for slot in sorted({d.slot for d in result.dispatched}):
        deps.dispatcher.send_slot(slot)  # one message decides the whole slot
    result.relayed = relay(deps)
    relay_receipts(deps)
    return result
