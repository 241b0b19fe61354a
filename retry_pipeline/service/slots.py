"""The attempts of one slot (R8, R10, R11): claim a batch, read Kei-MOTAS once, decide, write.

Each batch is one transaction: claim (locked; PostgreSQL skips rows another batch
holds), one registry read for all its applications as of the slot, bulk writes. A
duplicate message, a second worker or a redelivery finds the claimed chains no
longer due (DESIGN 3).

A slot's work is split across workers when the store shares claims (PostgreSQL):
a message decides one batch and, when the batch was full, first sends the slot's
message again, so whichever worker is free takes the next batch. A worker that dies
mid-batch rolls back; its message comes back (acks_late) and the grid tick re-sends
the slot once it is overdue. SQLite: one process decides the slot batch after batch.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta

from retry_pipeline.attempts import Decision, decide_attempt, kinds_to_check
from retry_pipeline.calendar import format_instant
from retry_pipeline.model import (
    Chain,
    Cursor,
    Ending,
    Event,
    HistoryEntry,
    Outcome,
    history_line,
    sorted_kinds,
)
from retry_pipeline.policy import replan
from retry_pipeline.ports import UnitOfWork
from retry_pipeline.service.context import Deps, close_signals
from retry_pipeline.service.outcomes import end_chains, ending_line

log = logging.getLogger(__name__)

BATCH = 500  # chains decided per transaction
SHOWN = 200  # applications a slot names in its task result (Flower), the first ones


def run_slot(
    deps: Deps, slot: datetime, batch: int = BATCH, decided: dict[str, str] | None = None
) -> dict[str, int]:
    """Every chain due at ``slot``, decided in batches; counts of what became of them.

    ``decided``, if given, receives how the attempt went for the first ``SHOWN``
    applications: ``resumed``, ``auto_corrected: safety``, ``next <slot>``. ``held``
    (only when some are): chains still due at ``slot`` whose rows another transaction
    held, so the batch skipped them (SKIP LOCKED); the caller tries the slot again.
    """
    counts = {"next": 0, "parked": 0, Outcome.RESUMED.value: 0, Outcome.AUTO_CORRECTED.value: 0}
    if deps.clock.now() < slot:
        deps.dispatcher.send_slot(slot)  # early: again with its ETA
        return counts
    with deps.store.unit() as u:
        signals = close_signals(u, slot)
    if not deps.calendar.is_slot(slot, signals):
        counts["parked"] = park_slot(deps, slot, signals)  # R10: a close took it away
        return counts
    share = deps.store.shares_claims
    while True:
        with deps.store.unit() as u:
            claimed, shared = _decide_batch(deps, u, slot, signals, batch, counts, share, decided)
            held = u.chains.waiting(slot) if share and claimed < batch else 0
        if held:
            counts["held"] = held
        if claimed < batch or shared:
            return counts


def _share(deps: Deps, slot: datetime) -> bool:
    """Another message for ``slot``, so a free worker claims the next batch meanwhile."""
    try:
        deps.dispatcher.send_slot(slot)
    except Exception:  # broker down: this process works the slot through itself
        log.exception("could not share the slot %s; deciding it in this process", slot)
        return False
    return True


def _decide_batch(
    deps: Deps,
    u: UnitOfWork,
    slot: datetime,
    signals: list[datetime],
    batch: int,
    counts: dict[str, int],
    share: bool,
    decided: dict[str, str] | None = None,
) -> tuple[int, bool]:
    """One batch in ``u``: the number claimed, and whether the rest went to another message."""
    now = deps.clock.now()
    claimed = [
        replace(c, attempts_made=c.attempts_made + 1, version=c.version + 1)
        for c in u.chains.claim(slot, batch)
    ]
    if not claimed:
        return 0, False
    # A full batch: more may be due. Shared claims (SKIP LOCKED) let the next message's
    # worker take the next batch while this one decides; it never waits for our locks.
    shared = share and len(claimed) == batch and _share(deps, slot)
    presents = deps.registry.present_many([(c.subject, kinds_to_check(c)) for c in claimed], slot)
    steps: list[Chain] = []
    endings: list[Ending] = []
    for chain, present in zip(claimed, presents, strict=True):
        decision = decide_attempt(chain, present, deps.calendar, signals)
        if decision.next_cursor is not None:
            steps.append(
                replace(
                    chain, missing=decision.missing, found=decision.found,
                    cursor=decision.next_cursor, dispatched_for=None,
                )
            )  # fmt: skip
            counts["next"] += 1
        else:
            assert decision.outcome is not None
            endings.append(
                Ending(
                    chain.chain_id, chain.subject, decision.outcome, decision.missing, slot,
                    decision.reason, attempt_no=chain.attempts_made, found=decision.found,
                )
            )  # fmt: skip
            counts[decision.outcome.value] += 1
        if decided is not None and len(decided) < SHOWN:
            decided[chain.subject.application] = _how(decision)
    # DESIGN 2: the next slot's message goes now when it is at most a slot away; the
    # chains are marked so the tick does not send it again (unless it is lost).
    soon = {c.cursor.slot for c in steps if c.cursor.slot <= now + deps.step}
    dispatched = min(soon) if len(soon) == 1 else None
    steps = [
        replace(c, dispatched_for=dispatched) if c.cursor.slot == dispatched else c for c in steps
    ]
    u.chains.save(steps, now)
    u.history.append(
        [_attempt_line(c, before.cursor, slot, now) for c, before in _with_claimed(steps, claimed)]
        + [ending_line(e, now) for e in endings]
    )
    end_chains(deps, u, endings, now)
    if dispatched is not None:
        u.after_commit(lambda: deps.slots.send_once(dispatched))
    return len(claimed), shared


def _how(decision: Decision) -> str:
    """How an attempt went, for the slot's task result (times in +09:00)."""
    if decision.next_cursor is not None:
        return f"next {format_instant(decision.next_cursor.slot)}"
    if decision.outcome is Outcome.RESUMED:
        return decision.outcome.value
    return f"{Outcome.AUTO_CORRECTED.value}: {', '.join(sorted_kinds(decision.missing))}"


def _with_claimed(steps: list[Chain], claimed: list[Chain]) -> list[tuple[Chain, Chain]]:
    by_id = {c.chain_id: c for c in claimed}
    return [(c, by_id[c.chain_id]) for c in steps]


def _attempt_line(chain: Chain, before: Cursor, slot: datetime, now: datetime) -> HistoryEntry:
    detail = f"still missing; next {chain.cursor.slot.isoformat()}"
    if chain.cursor.parked and not before.parked:
        detail += " (parked, R10)"
    return history_line(
        chain.chain_id, chain.subject, Event.ATTEMPT, chain.attempts_made, slot, chain.missing,
        detail, now, found=chain.found,
    )  # fmt: skip


def reschedule(
    deps: Deps,
    u: UnitOfWork,
    chains: list[Chain],
    signals: list[datetime],
    now: datetime,
    detail: str,
) -> int:
    """R10: move each chain whose slot a close took away; logged as ``parked``."""
    moved = []
    for chain in chains:
        cursor = replan(chain.cursor, deps.calendar, signals)
        if cursor != chain.cursor:
            moved.append(replace(chain, cursor=cursor, version=chain.version + 1))
    u.chains.save(moved, now)
    u.history.append(
        [
            history_line(
                c.chain_id, c.subject, Event.PARKED, None, c.cursor.slot, c.missing, detail, now
            )
            for c in moved
        ]
    )
    return len(moved)


def park_slot(deps: Deps, slot: datetime, signals: list[datetime]) -> int:
    """R10: the chains of a slot that a close signal took away."""
    now = deps.clock.now()
    with deps.store.unit() as u:
        chains = u.chains.slotted_between(slot, slot + timedelta(seconds=1))
        return reschedule(deps, u, chains, signals, now, "R10: closed before this slot")
