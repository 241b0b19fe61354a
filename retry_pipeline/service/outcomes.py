"""Endings into the outbox, and the relay to the examination side (DESIGN 5)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from retry_pipeline.model import Ending, Event, HistoryEntry, PendingOutcome, history_line
from retry_pipeline.ports import UnitOfWork
from retry_pipeline.service.context import Deps

log = logging.getLogger(__name__)

RELAY_LIMIT = 500


def ending_line(ending: Ending, now: datetime) -> HistoryEntry:
    """The history line of an ending (R5): the deciding attempt or report, and why."""
    return history_line(
        ending.chain_id,
        ending.subject,
        Event.ending(ending.outcome),
        ending.attempt_no,
        ending.decided_at,
        ending.missing,
        ending.reason,
        now,
        found=ending.found,
    )


def end_chains(deps: Deps, u: UnitOfWork, endings: Sequence[Ending], now: datetime) -> None:
    """R5/R8: delete the records and write the outcomes in this unit; deliver on commit.

    The caller writes the history lines (``ending_line``), in order with its others.
    """
    if not endings:
        return
    u.chains.delete([e.chain_id for e in endings if e.live])
    outcomes = u.outbox.add(endings, now)
    u.after_commit(lambda: deliver(deps, outcomes))


def deliver(deps: Deps, outcomes: Sequence[PendingOutcome]) -> None:
    """Hand outcomes to the examination side; what fails stays for the relay."""
    sent = []
    for outcome in outcomes:
        try:
            deps.gateway.deliver(outcome)
        except Exception:
            log.exception("could not deliver %s; the relay will", outcome.idempotency_key)
            break
        sent.append(outcome.id)
    if sent:
        with deps.store.unit() as u:
            u.outbox.mark_sent(sent, deps.clock.now())


def relay(deps: Deps, limit: int = RELAY_LIMIT) -> int:
    """Deliver outcomes at least once, each always with its idempotency key.

    Never-sent outcomes go now; sent ones the examination side has not confirmed go
    again once two slots have passed (the broker may have forgotten them).
    """
    now = deps.clock.now()
    with deps.store.unit() as u:
        pending = u.outbox.pending(limit, resend_before=now - 2 * deps.step)
    deliver(deps, pending)
    return len(pending)


def confirm_outcome(deps: Deps, idempotency_key: str) -> bool:
    """The examination side acknowledges an outcome: stop re-sending it."""
    with deps.store.unit() as u:
        return u.outbox.confirm(idempotency_key, deps.clock.now())
