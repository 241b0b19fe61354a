"""The grid tick (DESIGN 4): park at the close, re-send attempts that are due and did not run."""

from __future__ import annotations

from dataclasses import dataclass, field

from retry_pipeline.model import Dispatch
from retry_pipeline.service.closing import park_if_closed
from retry_pipeline.service.context import Deps
from retry_pipeline.service.outcomes import relay


@dataclass
class TickResult:
    """What one grid tick did."""

    parked: int = 0
    dispatched: list[Dispatch] = field(default_factory=list)
    relayed: int = 0


def tick(deps: Deps) -> TickResult:
    """Park at the close, release at 08:30 (R11, R13), re-send what is due, relay outcomes."""
    now = deps.clock.now()
    result = TickResult(parked=park_if_closed(deps, now))
    with deps.store.unit() as u:  # set-based: one statement marks what is due and not in flight
        result.dispatched = u.chains.dispatch_due(now, now - deps.step)
    for slot in sorted({d.slot for d in result.dispatched}):
        deps.dispatcher.send_slot(slot)  # one message decides the whole slot
    result.relayed = relay(deps)
    return result
