"""Endings into the outbox, and the relay to the examination side (DESIGN 5)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from retry_pipeline.errors import DeliveryFailed
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

    The outcomes are written as sent once (booked): the send follows the commit, so a
    release of thousands needs no second write to mark them. A send that fails takes
    its booking back (they go at the relay's next tick); a worker that dies between
    the commit and the send leaves them booked, and the relay sends them again after
    RELAY_BACKOFF_MIN, as it does a message the broker lost (docs/reliability.md).
    The caller writes the history lines (``ending_line``), in order with its others.
    """
    if not endings:
        return
    u.chains.delete([e.chain_id for e in endings if e.live])
    outcomes = u.outbox.add(endings, now, booked_until=now + resend_delay(deps, 1))
    u.after_commit(lambda: deliver(deps, outcomes, booked=True))


def resend_delay(deps: Deps, sends: int) -> timedelta:
    """How long after its ``sends``-th send an unconfirmed outcome may go again: the
    back-off doubles from RELAY_BACKOFF_MIN up to RELAY_BACKOFF_MAX_MIN."""
    settings = deps.calendar.settings
    minutes = settings.relay_backoff_min * 2 ** min(max(sends - 1, 0), 16)
    return timedelta(minutes=min(minutes, settings.relay_backoff_max_min))


def deliver(deps: Deps, outcomes: Sequence[PendingOutcome], booked: bool = False) -> None:
    """Hand outcomes to the examination side (one batch of messages); what fails stays
    for the relay. ``booked``: the outbox has them as sent already (``end_chains``),
    so only the ones that failed are written, back to never sent."""
    if not outcomes:
        return
    try:
        deps.gateway.deliver(outcomes)
        handed = len(outcomes)
    except Exception as exc:
        handed = min(exc.handed, len(outcomes)) if isinstance(exc, DeliveryFailed) else 0
        first = outcomes[min(handed, len(outcomes) - 1)].idempotency_key
        log.exception(
            "could not deliver %d of %d outcome(s), from %s on; the relay will",
            len(outcomes) - handed, len(outcomes), first,
        )  # fmt: skip
    if booked:
        if handed < len(outcomes):
            _unbook(deps, [o.id for o in outcomes[handed:]])
        return
    if handed:
        with deps.store.unit() as u:
            record_sent(deps, u, outcomes[:handed], deps.clock.now())


def record_sent(
    deps: Deps, u: UnitOfWork, outcomes: Sequence[PendingOutcome], now: datetime
) -> None:
    """These outcomes were handed over once more at ``now``: unconfirmed, each may go
    again after the back-off of its number of sends (the relay's and an operator's)."""
    sent: dict[int, list[int]] = {}  # sends after this one -> outbox ids
    for outcome in outcomes:
        sent.setdefault(outcome.send_count + 1, []).append(outcome.id)
    for sends, ids in sorted(sent.items()):
        u.outbox.mark_sent(ids, now, resend_at=now + resend_delay(deps, sends))


def _unbook(deps: Deps, ids: list[int]) -> None:
    try:
        with deps.store.unit() as u:
            u.outbox.unbook(ids)
    except Exception:  # the database too: they go again after the back-off
        log.exception("could not take back the booking of %d unsent outcome(s)", len(ids))


def relay(deps: Deps, limit: int = RELAY_LIMIT) -> int:
    """Deliver outcomes at least once, each always with its idempotency key.

    Never-sent outcomes go first; sent ones the examination side has not confirmed go
    again once their back-off has passed (the broker may have forgotten them), at most
    RELAY_MAX_SENDS times in all: then the relay gives up on them (``count_given_up``,
    an alert) instead of re-sending them forever.
    """
    now = deps.clock.now()
    cap = deps.calendar.settings.relay_max_sends
    with deps.store.unit() as u:
        pending = u.outbox.pending(limit, resend_before=now)
        spent = [p for p in pending if p.send_count >= cap]
        u.outbox.give_up([p.id for p in spent], now)
    for p in spent:
        log.error("gave up on %s after %d unconfirmed sends", p.idempotency_key, p.send_count)
    due = [p for p in pending if p.send_count < cap]
    deliver(deps, due)
    return len(due)


def confirm_outcome(deps: Deps, idempotency_key: str) -> bool:
    """The examination side acknowledges an outcome: stop re-sending it."""
    with deps.store.unit() as u:
        return u.outbox.confirm(idempotency_key, deps.clock.now())
