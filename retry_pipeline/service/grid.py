"""The grid tick (DESIGN 4): park at the close, re-send attempts that are due and did not run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from retry_pipeline.model import Dispatch
from retry_pipeline.service.closing import park_if_closed
from retry_pipeline.service.context import Deps
from retry_pipeline.service.outcomes import relay
from retry_pipeline.service.receipts import relay_receipts

log = logging.getLogger(__name__)

DUE_LIMIT = 1_000_000


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
    overdue_before = now - deps.step
    slots: dict[datetime, list[str]] = {}
    with deps.store.unit() as u:
        for chain in u.chains.due(now, DUE_LIMIT):
            if chain.dispatched_for == chain.cursor.slot and chain.cursor.slot > overdue_before:
                continue  # its message is in flight and not late yet
            slots.setdefault(chain.cursor.slot, []).append(chain.chain_id)
            result.dispatched.append(
                Dispatch(chain.chain_id, chain.next_attempt_no, chain.cursor.slot)
            )
        for slot, ids in slots.items():
            u.chains.mark_dispatched(ids, slot)
    for slot in sorted(slots):
        deps.dispatcher.send_slot(slot)  # one message decides the whole slot
    result.relayed = relay(deps)
    relay_receipts(deps)
    return result
