"""The report of a simulation, and what is measured around it (lateness, doubles)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.model import Event, HistoryEntry
from simulation import examination
from simulation.faults import FaultStats

Lateness = tuple[str, datetime, int]  # chain id, slot, whole slots late


@dataclass
class RunStats:
    """What happened around the report: faults, restarts, lateness (not part of the report)."""

    faults: FaultStats
    restarts: dict[str, int]
    max_lateness_slots: int
    redeliveries: int  # outcome deliveries beyond the first (same idempotency key)
    wall_s: float
    outcomes_per_application: dict[str, int]  # distinct outcomes (keys) received
    endings_per_chain: int  # the most outbox rows any chain has (1 = never doubled)
    # hold-row-lock: the held chains' largest lateness, and the other chains' largest at
    # the slots that fell while a lock was held (see held_and_others)
    held_lateness_slots: int = 0
    others_lateness_slots: int = 0


def outcomes_per_application(engine: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for received in examination.received(engine):
        counts[received.application] = counts.get(received.application, 0) + 1
    return counts


def endings_per_chain(store: RetryStore) -> int:
    with store.unit() as u:
        history = u.history.lines()
    endings: dict[str, int] = {}
    for h in history:
        if h.event in (Event.RESUMED, Event.AUTO_CORRECTED):
            endings[h.chain_id] = endings.get(h.chain_id, 0) + 1
    return max(endings.values(), default=0)


def attempt_lateness(store: RetryStore, calendar: BusinessCalendar) -> list[Lateness]:
    """Every attempt's chain, slot, and delay behind the slot in whole slots."""
    step_s = calendar.settings.step_min * 60
    with store.unit() as u:
        history = u.history.lines()
    return [
        (h.chain_id, h.slot, int((h.recorded_at - h.slot).total_seconds() // step_s))
        for h in history
        if h.slot is not None and h.attempt_no is not None
    ]


def held_and_others(
    lateness: list[Lateness], held: Collection[str], windows: Sequence[tuple[datetime, datetime]]
) -> tuple[int, int]:
    """The held chains' largest lateness; the others' at slots inside a hold window (pure).

    Only the slots while a lock was held: what the lock could have delayed, not the
    start of the run or another fault of the same run.
    """
    held_late = max((n for c, _s, n in lateness if c in held), default=0)
    others = max(
        (n for c, slot, n in lateness if c not in held and any(a <= slot <= b for a, b in windows)),
        default=0,
    )
    return held_late, others


def application_of(payload: str) -> str | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return body.get("application") if isinstance(body, dict) else None


def final_outcomes(engine: Any) -> dict[str, examination.ReceivedOutcome]:
    """The last outcome each application received (by decision time)."""
    last: dict[str, examination.ReceivedOutcome] = {}
    for received in examination.received(engine):
        prev = last.get(received.application)
        if prev is None or received.decided_at >= prev.decided_at:
            last[received.application] = received
    return last


def attempt_slots(history: list[HistoryEntry], chain_id: str) -> list[datetime]:
    """The grid slots of a chain's attempts, the deciding one included."""
    endings = (Event.RESUMED, Event.AUTO_CORRECTED)
    return [
        h.slot
        for h in history
        if h.chain_id == chain_id
        and h.slot is not None
        and (h.event == Event.ATTEMPT or (h.event in endings and h.attempt_no is not None))
    ]


def build_report(store: RetryStore, engine: Any, applications: list[str]) -> dict[str, Any]:
    """One entry per application: outcome, attempt slots, decided_at, missing."""
    finals = final_outcomes(engine)
    with store.unit() as u:
        history = u.history.lines()
    entries = [
        {
            "application": app,
            "outcome": finals[app].outcome,
            "attempts": [format_instant(s) for s in attempt_slots(history, finals[app].chain_id)],
            "decided_at": finals[app].decided_at,
            "missing": sorted(finals[app].missing),
        }
        for app in applications
        if app in finals
    ]
    report: dict[str, Any] = {"applications": entries}
    with store.unit() as u:
        letters = u.dead_letters.newest(10_000)
    if letters:
        report["refused"] = sorted(
            ({"task": d.task, "reason": d.reason} for d in letters), key=lambda d: d["reason"]
        )
    return report
