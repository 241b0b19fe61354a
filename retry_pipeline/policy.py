"""The plan of attempts (R6–R13): where a chain stands and where it goes next.

Pure functions over a ``Cursor``; the pipeline and ``retry-pipeline plan`` both
walk the same functions, so there is one implementation of the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import pendulum

from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.model import Cursor, Phase


def budget(phase: Phase, calendar: BusinessCalendar) -> int:
    """Attempts a phase allows: 6 for a day's chain (R7), 1 after parking (R11)."""
    s = calendar.settings
    return s.next_day_attempts if phase is Phase.NEXT_DAY else s.attempts_per_chain


def start_chain(
    detected_at: datetime, calendar: BusinessCalendar, close_signals: Iterable[datetime] = ()
) -> Cursor:
    """Where a chain detected at ``detected_at`` makes its first attempt (R7, R12, R13)."""
    signals = tuple(close_signals)
    local = to_local(detected_at)
    day = local.date()
    if calendar.in_review_hours(local, signals):
        slot = calendar.next_slot_after(local, signals)
        if slot is not None:
            return Cursor(Phase.SAME_DAY, 0, slot)
        # R12: in review hours but no slot before close: parked with 0 attempts.
        return Cursor(Phase.NEXT_DAY, 0, calendar.next_opening(day, signals))
    # R13: before the opening of a business day starts that day; otherwise the next one.
    inclusive = local < calendar.opening_at(day)
    return Cursor(Phase.FRESH, 0, calendar.next_opening(day, signals, inclusive=inclusive))


def advance_chain(
    cursor: Cursor, calendar: BusinessCalendar, close_signals: Iterable[datetime] = ()
) -> Cursor | None:
    """After the attempt at ``cursor.slot`` still misses a certificate: the next one, or None.

    None means the attempt was the last allowed: auto-correct at that slot (R8, R11).
    """
    signals = tuple(close_signals)
    made = cursor.used + 1
    if made >= budget(cursor.phase, calendar):
        return None
    following = calendar.next_slot_after(cursor.slot, signals)
    if following is not None:
        phase = Phase.SAME_DAY if cursor.phase is Phase.FRESH else cursor.phase
        return Cursor(phase, made, following)
    day = to_local(cursor.slot).date()
    if cursor.phase is Phase.NEXT_DAY:
        # More than one next-day attempt configured and the close cut them: go on next day.
        return Cursor(Phase.NEXT_DAY, made, calendar.next_opening(day, signals))
    # R10/R11: close parks the chain; the count does not continue.
    return Cursor(Phase.NEXT_DAY, 0, calendar.next_opening(day, signals))


def replan(
    cursor: Cursor, calendar: BusinessCalendar, close_signals: Iterable[datetime] = ()
) -> Cursor:
    """The cursor again, after a close signal may have taken its slot away (R10)."""
    signals = tuple(close_signals)
    if calendar.is_slot(cursor.slot, signals):
        return cursor
    day = to_local(cursor.slot).date()
    nxt = calendar.next_opening(day, signals)
    if cursor.phase is Phase.SAME_DAY:
        return Cursor(Phase.NEXT_DAY, 0, nxt)  # R10: every live chain is parked
    return replace(cursor, slot=nxt)  # R13 still fresh; a parked chain keeps its budget


@dataclass(frozen=True)
class Plan:
    """What a chain does if the certificate never arrives."""

    detected_at: pendulum.DateTime
    attempts: tuple[pendulum.DateTime, ...]
    parked_after: int | None  # attempts made before the chain parked, None if it never parks

    @property
    def auto_correct_at(self) -> pendulum.DateTime:
        """R8/R11: the last attempt's slot."""
        return self.attempts[-1]


def plan_attempts(
    detected_at: datetime, calendar: BusinessCalendar, close_signals: Sequence[datetime] = ()
) -> Plan:
    """Every attempt a chain would make if the certificate never arrives (R6–R13)."""
    cursor: Cursor | None = start_chain(detected_at, calendar, close_signals)
    attempts: list[pendulum.DateTime] = []
    parked_after: int | None = None
    while cursor is not None:
        if cursor.parked and parked_after is None:
            parked_after = len(attempts)
        attempts.append(cursor.slot)
        cursor = advance_chain(cursor, calendar, close_signals)
    return Plan(to_local(detected_at), tuple(attempts), parked_after)
