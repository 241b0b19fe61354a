"""The plan of attempts (R6–R13): worked examples, boundary tables, cursor steps, properties.

Expected attempt lists are literal Japan-time instants worked out by hand from
SPEC.md: the grid 08:30, 08:40, … strictly before the close (R6), the first slot
strictly after detection and at most 6 (R7), parking at close with one 08:30
attempt on the next business day (R10, R11, R12), off-hours detection starting
fresh (R13).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidInstant
from retry_pipeline.policy import (
    Cursor,
    Phase,
    Plan,
    advance_chain,
    budget,
    plan_attempts,
    replan,
    start_chain,
)

JST = ZoneInfo("Asia/Tokyo")
NINE_HOURS = timedelta(hours=9)
DEFAULT = BusinessCalendar(Settings())  # module-level: hypothesis refuses function fixtures


def jst(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=JST)


def grid(day: date, *hhmm: str) -> list[datetime]:
    """Literal Japan-time instants on ``day``, written as 'HH:MM'."""
    out = []
    for text in hhmm:
        h, m = text.split(":")
        out.append(datetime(day.year, day.month, day.day, int(h), int(m), tzinfo=JST))
    return out


def assert_plan(
    plan: Plan,
    detected_at: datetime,
    attempts: Sequence[datetime],
    parked_after: int | None,
) -> None:
    assert plan.detected_at == detected_at
    assert plan.detected_at.utcoffset() == NINE_HOURS
    assert list(plan.attempts) == list(attempts)
    assert all(a.utcoffset() == NINE_HOURS for a in plan.attempts)
    assert plan.parked_after == parked_after
    assert plan.auto_correct_at == attempts[-1]


FRI = date(2026, 11, 27)
SAT = date(2026, 11, 28)
MON = date(2026, 11, 30)
TUE = date(2026, 12, 1)


# --- the four worked examples of SPEC.md ---------------------------------------------------


def test_worked_example_r9_same_day(calendar: BusinessCalendar) -> None:
    # R9: Fri 08:36 -> six attempts 08:40 .. 09:30, auto-correction 54 minutes later.
    detected = jst(2026, 11, 27, 8, 36)
    plan = plan_attempts(detected, calendar)
    assert_plan(
        plan,
        detected,
        [
            jst(2026, 11, 27, 8, 40),
            jst(2026, 11, 27, 8, 50),
            jst(2026, 11, 27, 9, 0),
            jst(2026, 11, 27, 9, 10),
            jst(2026, 11, 27, 9, 20),
            jst(2026, 11, 27, 9, 30),
        ],
        None,
    )
    assert plan.auto_correct_at == jst(2026, 11, 27, 9, 30)
    assert plan.auto_correct_at - detected == timedelta(minutes=54)


def test_worked_example_r11_close_parks_friday_chain(calendar: BusinessCalendar) -> None:
    # R10/R11: Fri 15:25 -> 15:30, 15:40, 15:50; close 16:00 parks; Mon 08:30 is the last.
    detected = jst(2026, 11, 27, 15, 25)
    plan = plan_attempts(detected, calendar)
    assert_plan(
        plan,
        detected,
        [
            jst(2026, 11, 27, 15, 30),
            jst(2026, 11, 27, 15, 40),
            jst(2026, 11, 27, 15, 50),
            jst(2026, 11, 30, 8, 30),
        ],
        3,
    )
    assert plan.auto_correct_at == jst(2026, 11, 30, 8, 30)


def test_worked_example_r10_close_signal(calendar: BusinessCalendar) -> None:
    # R10: close signal Mon 10:45 -> 10:10, 10:20, 10:30, 10:40; Tue 08:30 (R11).
    detected = jst(2026, 11, 30, 10, 5)
    plan = plan_attempts(detected, calendar, [jst(2026, 11, 30, 10, 45)])
    assert_plan(
        plan,
        detected,
        [
            jst(2026, 11, 30, 10, 10),
            jst(2026, 11, 30, 10, 20),
            jst(2026, 11, 30, 10, 30),
            jst(2026, 11, 30, 10, 40),
            jst(2026, 12, 1, 8, 30),
        ],
        4,
    )
    assert plan.auto_correct_at == jst(2026, 12, 1, 8, 30)


def test_worked_example_r13_sunday(calendar: BusinessCalendar) -> None:
    # R13: Sun 10:00 -> fresh chain of six from Mon 08:30.
    detected = jst(2026, 11, 29, 10, 0)
    plan = plan_attempts(detected, calendar)
    assert_plan(
        plan,
        detected,
        [
            jst(2026, 11, 30, 8, 30),
            jst(2026, 11, 30, 8, 40),
            jst(2026, 11, 30, 8, 50),
            jst(2026, 11, 30, 9, 0),
            jst(2026, 11, 30, 9, 10),
            jst(2026, 11, 30, 9, 20),
        ],
        None,
    )
    assert plan.auto_correct_at == jst(2026, 11, 30, 9, 20)


# --- boundaries of the grid (R6, R7, R12, R13), default settings -------------------------

SIX_FROM_0830 = ("08:30", "08:40", "08:50", "09:00", "09:10", "09:20")

BOUNDARIES = [
    # (id, detected_at, attempts, parked_after)
    ("R7 exactly on a slot", jst(2026, 11, 27, 8, 40),
     grid(FRI, "08:50", "09:00", "09:10", "09:20", "09:30", "09:40"), None),
    ("R7 one second before a slot", jst(2026, 11, 27, 8, 39, 59),
     grid(FRI, "08:40", "08:50", "09:00", "09:10", "09:20", "09:30"), None),
    ("R7 one second after a slot", jst(2026, 11, 27, 8, 40, 1),
     grid(FRI, "08:50", "09:00", "09:10", "09:20", "09:30", "09:40"), None),
    ("R7 exactly at the opening 08:30", jst(2026, 11, 27, 8, 30),
     grid(FRI, "08:40", "08:50", "09:00", "09:10", "09:20", "09:30"), None),
    ("R13 08:29:59 same day from 08:30", jst(2026, 11, 27, 8, 29, 59),
     grid(FRI, *SIX_FROM_0830), None),
    ("R13 midnight same day from 08:30", jst(2026, 11, 27, 0, 0),
     grid(FRI, *SIX_FROM_0830), None),
    ("R13 exactly at close 16:00: next business day", jst(2026, 11, 27, 16, 0),
     grid(MON, *SIX_FROM_0830), None),
    ("R13 late evening Thursday: Friday", jst(2026, 11, 26, 23, 59, 59),
     grid(FRI, *SIX_FROM_0830), None),
    ("R12 15:50:00 no slot left", jst(2026, 11, 27, 15, 50),
     grid(MON, "08:30"), 0),
    ("R12 15:59:59 no slot left", jst(2026, 11, 27, 15, 59, 59),
     grid(MON, "08:30"), 0),
    ("R10 15:49:59 one slot then park", jst(2026, 11, 27, 15, 49, 59),
     [*grid(FRI, "15:50"), *grid(MON, "08:30")], 1),
    ("R9 14:59 last detection with six on the day", jst(2026, 11, 27, 14, 59),
     grid(FRI, "15:00", "15:10", "15:20", "15:30", "15:40", "15:50"), None),
    ("R9 14:50 exactly on a slot, six to 15:50", jst(2026, 11, 27, 14, 50),
     grid(FRI, "15:00", "15:10", "15:20", "15:30", "15:40", "15:50"), None),
    ("R10 15:00 only five slots left", jst(2026, 11, 27, 15, 0),
     [*grid(FRI, "15:10", "15:20", "15:30", "15:40", "15:50"), *grid(MON, "08:30")], 5),
    ("R13 Saturday", jst(2026, 11, 28, 12, 0),
     grid(MON, *SIX_FROM_0830), None),
    ("R13 Saturday 08:29 (not a business day)", jst(2026, 11, 28, 8, 29),
     grid(MON, *SIX_FROM_0830), None),
    ("R12 Thursday before Golden Week: Friday 05-01", jst(2026, 4, 30, 15, 55),
     grid(date(2026, 5, 1), "08:30"), 0),
    ("R11 Friday 05-01 parks across Golden Week to 05-07", jst(2026, 5, 1, 15, 25),
     [*grid(date(2026, 5, 1), "15:30", "15:40", "15:50"), *grid(date(2026, 5, 7), "08:30")], 3),
    ("R13 substitute holiday 2026-05-06", jst(2026, 5, 6, 10, 0),
     grid(date(2026, 5, 7), *SIX_FROM_0830), None),
    ("R13 Showa Day 2026-04-29", jst(2026, 4, 29, 10, 0),
     grid(date(2026, 4, 30), *SIX_FROM_0830), None),
    ("R13 citizens' holiday 2026-09-22", jst(2026, 9, 22, 9, 0),
     grid(date(2026, 9, 24), *SIX_FROM_0830), None),
    ("R11 Friday before Silver Week 2026", jst(2026, 9, 18, 15, 35),
     [*grid(date(2026, 9, 18), "15:40", "15:50"), *grid(date(2026, 9, 24), "08:30")], 2),
    ("R13 citizens' holiday 2019-04-30", jst(2019, 4, 30, 11, 0),
     grid(date(2019, 5, 7), *SIX_FROM_0830), None),
    ("R13 citizens' holiday 2019-05-02", jst(2019, 5, 2, 8, 0),
     grid(date(2019, 5, 7), *SIX_FROM_0830), None),
    ("R13 substitute holiday 2019-05-06", jst(2019, 5, 6, 10, 0),
     grid(date(2019, 5, 7), *SIX_FROM_0830), None),
    ("R11 Mon 12-28 parks across the year-end closure", jst(2026, 12, 28, 15, 25),
     [*grid(date(2026, 12, 28), "15:30", "15:40", "15:50"), *grid(date(2027, 1, 4), "08:30")],
     3),
    ("R13 year-end closure 12-30", jst(2026, 12, 30, 10, 0),
     grid(date(2027, 1, 4), *SIX_FROM_0830), None),
    ("R13 year-end closure 1-2 early morning", jst(2026, 1, 2, 7, 0),
     grid(date(2026, 1, 5), *SIX_FROM_0830), None),
    ("R13 New Year's Day", jst(2027, 1, 1, 9, 0),
     grid(date(2027, 1, 4), *SIX_FROM_0830), None),
    ("R7 Mon 12-28 morning: six on the last day of the year", jst(2026, 12, 28, 9, 5),
     grid(date(2026, 12, 28), "09:10", "09:20", "09:30", "09:40", "09:50", "10:00"), None),
    ("R7 detection in UTC: 23:36Z is Fri 08:36 JST", datetime(2026, 11, 26, 23, 36, tzinfo=UTC),
     grid(FRI, "08:40", "08:50", "09:00", "09:10", "09:20", "09:30"), None),
    ("R13 detection in UTC: 07:00Z is Fri 16:00 JST", datetime(2026, 11, 27, 7, 0, tzinfo=UTC),
     grid(MON, *SIX_FROM_0830), None),
    ("R13 detection in UTC: Thu 23:00Z is Fri 08:00 JST", datetime(2026, 11, 26, 23, 0,
                                                                   tzinfo=UTC),
     grid(FRI, *SIX_FROM_0830), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("detected_at", "attempts", "parked_after"),
    [pytest.param(d, a, p, id=i) for i, d, a, p in BOUNDARIES],
)
def test_plan_boundaries(
    calendar: BusinessCalendar,
    detected_at: datetime,
    attempts: list[datetime],
    parked_after: int | None,
) -> None:
    assert_plan(plan_attempts(detected_at, calendar), detected_at, attempts, parked_after)


def test_r9_at_15_00_only_five_slots_remain_so_it_parks(calendar: BusinessCalendar) -> None:
    # 15:10, 15:20, 15:30, 15:40, 15:50: five slots before the 16:00 close -> R10 parks.
    assert calendar.slots(FRI)[-5:] == grid(FRI, "15:10", "15:20", "15:30", "15:40", "15:50")
    plan = plan_attempts(jst(2026, 11, 27, 15, 0), calendar)
    assert plan.parked_after == 5
    assert plan.auto_correct_at == jst(2026, 11, 30, 8, 30)


# --- close signals (R10, R13) -----------------------------------------------------------------

SIGNALS = [
    # (id, detected_at, signals, attempts, parked_after)
    ("R10 signal after detection cuts the chain", jst(2026, 11, 30, 9, 5),
     [jst(2026, 11, 30, 9, 25)],
     [*grid(MON, "09:10", "09:20"), *grid(TUE, "08:30")], 2),
    ("R10 signal exactly on a slot: no attempt at it", jst(2026, 11, 30, 9, 5),
     [jst(2026, 11, 30, 9, 20)],
     [*grid(MON, "09:10"), *grid(TUE, "08:30")], 1),
    ("R12 signal leaves no slot after detection", jst(2026, 11, 30, 9, 11),
     [jst(2026, 11, 30, 9, 20)],
     grid(TUE, "08:30"), 0),
    ("R13 signal earlier than detection: outside review hours", jst(2026, 11, 30, 11, 0),
     [jst(2026, 11, 30, 10, 45)],
     grid(TUE, *SIX_FROM_0830), None),
    ("R13 detection exactly at the signal", jst(2026, 11, 30, 10, 45),
     [jst(2026, 11, 30, 10, 45)],
     grid(TUE, *SIX_FROM_0830), None),
    ("R10 signal later than configured close is ignored", jst(2026, 11, 27, 15, 25),
     [jst(2026, 11, 27, 17, 0)],
     [*grid(FRI, "15:30", "15:40", "15:50"), *grid(MON, "08:30")], 3),
    ("R10 signal on another day leaves the day whole", jst(2026, 11, 30, 8, 36),
     [jst(2026, 11, 27, 9, 0)],
     grid(MON, "08:40", "08:50", "09:00", "09:10", "09:20", "09:30"), None),
    ("R11 next day closed before opening: parked attempt moves on", jst(2026, 11, 27, 15, 25),
     [jst(2026, 11, 30, 8, 0)],
     [*grid(FRI, "15:30", "15:40", "15:50"), *grid(TUE, "08:30")], 3),
    ("R11 next day closing 08:35 keeps its 08:30", jst(2026, 11, 27, 15, 25),
     [jst(2026, 11, 30, 8, 35)],
     [*grid(FRI, "15:30", "15:40", "15:50"), *grid(MON, "08:30")], 3),
    ("R13 + R10 fresh chain cut by a signal on its day", jst(2026, 11, 29, 10, 0),
     [jst(2026, 11, 30, 9, 0)],
     [*grid(MON, "08:30", "08:40", "08:50"), *grid(TUE, "08:30")], 3),
    ("R13 before opening, day closed at 08:00: next day", jst(2026, 11, 30, 7, 0),
     [jst(2026, 11, 30, 8, 0)],
     grid(TUE, *SIX_FROM_0830), None),
    ("R13 fresh day with a single slot then park", jst(2026, 11, 30, 7, 0),
     [jst(2026, 11, 30, 8, 31)],
     [*grid(MON, "08:30"), *grid(TUE, "08:30")], 1),
    ("R10 signal given in UTC (01:25Z = 10:25 JST)", jst(2026, 11, 30, 10, 5),
     [datetime(2026, 11, 30, 1, 25, tzinfo=UTC)],
     [*grid(MON, "10:10", "10:20"), *grid(TUE, "08:30")], 2),
    ("R10 UTC signal on Tokyo's next day (20:00Z = Tue 05:00)", jst(2026, 11, 30, 15, 25),
     [datetime(2026, 11, 30, 20, 0, tzinfo=UTC)],
     [*grid(MON, "15:30", "15:40", "15:50"), *grid(date(2026, 12, 2), "08:30")], 3),
    ("R10 two signals: the earlier one on the day wins", jst(2026, 11, 30, 10, 5),
     [jst(2026, 11, 30, 14, 0), jst(2026, 11, 30, 10, 35)],
     [*grid(MON, "10:10", "10:20", "10:30"), *grid(TUE, "08:30")], 3),
]  # fmt: skip


@pytest.mark.parametrize(
    ("detected_at", "signals", "attempts", "parked_after"),
    [pytest.param(d, s, a, p, id=i) for i, d, s, a, p in SIGNALS],
)
def test_plan_with_close_signals(
    calendar: BusinessCalendar,
    detected_at: datetime,
    signals: list[datetime],
    attempts: list[datetime],
    parked_after: int | None,
) -> None:
    plan = plan_attempts(detected_at, calendar, signals)
    assert_plan(plan, detected_at, attempts, parked_after)


def test_plan_refuses_naive_detection(calendar: BusinessCalendar) -> None:
    with pytest.raises(InvalidInstant):
        plan_attempts(datetime(2026, 11, 27, 8, 36), calendar)


# --- configurable settings --------------------------------------------------------------------


def test_attempts_per_chain_3() -> None:
    cal = BusinessCalendar(Settings(attempts_per_chain=3))
    detected = jst(2026, 11, 27, 8, 36)
    assert_plan(plan_attempts(detected, cal), detected, grid(FRI, "08:40", "08:50", "09:00"), None)
    # R13 with a budget of 3.
    sunday = jst(2026, 11, 29, 10, 0)
    assert_plan(plan_attempts(sunday, cal), sunday, grid(MON, "08:30", "08:40", "08:50"), None)
    # Parking: 15:40, 15:50 use 2 of 3, then one next-day attempt (R11).
    late = jst(2026, 11, 27, 15, 35)
    assert_plan(
        plan_attempts(late, cal), late, [*grid(FRI, "15:40", "15:50"), *grid(MON, "08:30")], 2
    )


def test_step_15_minutes() -> None:
    cal = BusinessCalendar(Settings(step_min=15))
    detected = jst(2026, 11, 27, 8, 36)
    assert_plan(
        plan_attempts(detected, cal),
        detected,
        grid(FRI, "08:45", "09:00", "09:15", "09:30", "09:45", "10:00"),
        None,
    )
    late = jst(2026, 11, 27, 15, 5)
    assert_plan(
        plan_attempts(late, cal),
        late,
        [*grid(FRI, "15:15", "15:30", "15:45"), *grid(MON, "08:30")],
        3,
    )


def test_close_at_noon() -> None:
    cal = BusinessCalendar(Settings(close=time(12, 0)))
    detected = jst(2026, 11, 27, 11, 25)
    assert_plan(
        plan_attempts(detected, cal),
        detected,
        [*grid(FRI, "11:30", "11:40", "11:50"), *grid(MON, "08:30")],
        3,
    )
    # 12:00 is the close: R13, fresh next business day.
    noon = jst(2026, 11, 27, 12, 0)
    assert_plan(plan_attempts(noon, cal), noon, grid(MON, *SIX_FROM_0830), None)
    # 11:55 is in review hours with no slot left: R12.
    r12 = jst(2026, 11, 27, 11, 55)
    assert_plan(plan_attempts(r12, cal), r12, grid(MON, "08:30"), 0)


def test_next_day_attempts_2() -> None:
    # Two next-day attempts run on the grid from the next opening (R6, R11 with budget 2).
    cal = BusinessCalendar(Settings(next_day_attempts=2))
    detected = jst(2026, 11, 27, 15, 25)
    assert_plan(
        plan_attempts(detected, cal),
        detected,
        [*grid(FRI, "15:30", "15:40", "15:50"), *grid(MON, "08:30", "08:40")],
        3,
    )
    r12 = jst(2026, 11, 27, 15, 55)
    assert_plan(plan_attempts(r12, cal), r12, grid(MON, "08:30", "08:40"), 0)


def test_next_day_attempts_2_cut_by_close_on_next_day() -> None:
    # The next day closes at 08:35: its one slot is used, the second goes to Tuesday.
    cal = BusinessCalendar(Settings(next_day_attempts=2))
    detected = jst(2026, 11, 27, 15, 25)
    assert_plan(
        plan_attempts(detected, cal, [jst(2026, 11, 30, 8, 35)]),
        detected,
        [*grid(FRI, "15:30", "15:40", "15:50"), *grid(MON, "08:30"), *grid(TUE, "08:30")],
        3,
    )


# --- start_chain / advance_chain / replan -----------------------------------------------------


def test_budget_defaults(calendar: BusinessCalendar) -> None:
    assert budget(Phase.FRESH, calendar) == 6  # R13
    assert budget(Phase.SAME_DAY, calendar) == 6  # R7
    assert budget(Phase.NEXT_DAY, calendar) == 1  # R11


@pytest.mark.parametrize(
    ("detected_at", "signals", "expected"),
    [
        # R7: in review hours with a slot left.
        (jst(2026, 11, 27, 8, 36), (), Cursor(Phase.SAME_DAY, 0, jst(2026, 11, 27, 8, 40))),
        (jst(2026, 11, 27, 15, 49), (), Cursor(Phase.SAME_DAY, 0, jst(2026, 11, 27, 15, 50))),
        # R12: in review hours, no slot before the close: parked with 0 attempts.
        (jst(2026, 11, 27, 15, 50), (), Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30))),
        (
            jst(2026, 11, 30, 10, 41),
            (jst(2026, 11, 30, 10, 45),),
            Cursor(Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30)),
        ),
        # R13: before opening on a business day: that day's opening.
        (jst(2026, 11, 27, 8, 29, 59), (), Cursor(Phase.FRESH, 0, jst(2026, 11, 27, 8, 30))),
        # R13: at/after the close, or a closed day: the next business day's opening.
        (jst(2026, 11, 27, 16, 0), (), Cursor(Phase.FRESH, 0, jst(2026, 11, 30, 8, 30))),
        (jst(2026, 11, 28, 7, 0), (), Cursor(Phase.FRESH, 0, jst(2026, 11, 30, 8, 30))),
        (
            jst(2026, 11, 30, 11, 0),
            (jst(2026, 11, 30, 10, 45),),
            Cursor(Phase.FRESH, 0, jst(2026, 12, 1, 8, 30)),
        ),
        (jst(2026, 12, 28, 16, 30), (), Cursor(Phase.FRESH, 0, jst(2027, 1, 4, 8, 30))),
    ],
)
def test_start_chain(
    calendar: BusinessCalendar,
    detected_at: datetime,
    signals: tuple[datetime, ...],
    expected: Cursor,
) -> None:
    cursor = start_chain(detected_at, calendar, signals)
    assert cursor == expected
    assert cursor.parked is (expected.phase is Phase.NEXT_DAY)


def test_advance_fresh_becomes_same_day(calendar: BusinessCalendar) -> None:
    # R13 -> R7: after the first attempt of a fresh chain it runs on the day's grid.
    nxt = advance_chain(Cursor(Phase.FRESH, 0, jst(2026, 11, 30, 8, 30)), calendar)
    assert nxt == Cursor(Phase.SAME_DAY, 1, jst(2026, 11, 30, 8, 40))


def test_advance_same_day_next_slot(calendar: BusinessCalendar) -> None:
    nxt = advance_chain(Cursor(Phase.SAME_DAY, 2, jst(2026, 11, 27, 9, 0)), calendar)
    assert nxt == Cursor(Phase.SAME_DAY, 3, jst(2026, 11, 27, 9, 10))


def test_advance_sixth_attempt_is_last(calendar: BusinessCalendar) -> None:
    # R8: the 6th attempt (used=5) still missing -> auto-correct at it.
    assert advance_chain(Cursor(Phase.SAME_DAY, 5, jst(2026, 11, 27, 9, 30)), calendar) is None
    assert advance_chain(Cursor(Phase.FRESH, 5, jst(2026, 11, 30, 9, 20)), calendar) is None
    assert advance_chain(Cursor(Phase.SAME_DAY, 4, jst(2026, 11, 27, 9, 20)), calendar) == Cursor(
        Phase.SAME_DAY, 5, jst(2026, 11, 27, 9, 30)
    )


def test_advance_same_day_parks_at_close(calendar: BusinessCalendar) -> None:
    # R10/R11: no slot before close -> parked, count restarts at 0 (does not continue).
    nxt = advance_chain(Cursor(Phase.SAME_DAY, 2, jst(2026, 11, 27, 15, 50)), calendar)
    assert nxt == Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30))
    assert nxt is not None and nxt.parked


def test_advance_same_day_parks_at_close_signal(calendar: BusinessCalendar) -> None:
    nxt = advance_chain(
        Cursor(Phase.SAME_DAY, 3, jst(2026, 11, 30, 10, 40)), calendar, [jst(2026, 11, 30, 10, 45)]
    )
    assert nxt == Cursor(Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30))


def test_advance_fresh_parks_when_its_day_is_cut(calendar: BusinessCalendar) -> None:
    nxt = advance_chain(
        Cursor(Phase.FRESH, 0, jst(2026, 11, 30, 8, 30)), calendar, [jst(2026, 11, 30, 8, 35)]
    )
    assert nxt == Cursor(Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30))


def test_advance_parked_attempt_is_last(calendar: BusinessCalendar) -> None:
    # R11: the one next-day attempt still missing -> auto-correct at 08:30.
    assert advance_chain(Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30)), calendar) is None


def test_advance_parked_with_two_next_day_attempts() -> None:
    cal = BusinessCalendar(Settings(next_day_attempts=2))
    cursor = Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30))
    assert advance_chain(cursor, cal) == Cursor(Phase.NEXT_DAY, 1, jst(2026, 11, 30, 8, 40))
    assert advance_chain(Cursor(Phase.NEXT_DAY, 1, jst(2026, 11, 30, 8, 40)), cal) is None
    # Cut by a close signal: the budget is kept and the chain waits for the next opening.
    assert advance_chain(cursor, cal, [jst(2026, 11, 30, 8, 35)]) == Cursor(
        Phase.NEXT_DAY, 1, jst(2026, 12, 1, 8, 30)
    )


def test_advance_across_year_end(calendar: BusinessCalendar) -> None:
    nxt = advance_chain(Cursor(Phase.SAME_DAY, 1, jst(2026, 12, 28, 15, 50)), calendar)
    assert nxt == Cursor(Phase.NEXT_DAY, 0, jst(2027, 1, 4, 8, 30))


def test_replan_keeps_valid_cursor(calendar: BusinessCalendar) -> None:
    cursor = Cursor(Phase.SAME_DAY, 2, jst(2026, 11, 30, 10, 30))
    assert replan(cursor, calendar) is cursor
    # A signal after the slot does not take it.
    assert replan(cursor, calendar, [jst(2026, 11, 30, 10, 45)]) is cursor
    # A signal on another day does not either.
    assert replan(cursor, calendar, [jst(2026, 11, 27, 9, 0)]) is cursor


def test_replan_parks_same_day_cursor_whose_slot_is_taken(calendar: BusinessCalendar) -> None:
    # R10: the close signal at 10:45 takes the 10:50 slot: park, count restarts (R11).
    cursor = Cursor(Phase.SAME_DAY, 3, jst(2026, 11, 30, 10, 50))
    assert replan(cursor, calendar, [jst(2026, 11, 30, 10, 45)]) == Cursor(
        Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30)
    )
    # A signal exactly at the slot takes it too (no attempt at or after the close).
    assert replan(cursor, calendar, [jst(2026, 11, 30, 10, 50)]) == Cursor(
        Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30)
    )


def test_replan_keeps_fresh_cursor_fresh(calendar: BusinessCalendar) -> None:
    # R13: the opening of Monday is taken by an 08:00 signal: still fresh, on Tuesday.
    cursor = Cursor(Phase.FRESH, 0, jst(2026, 11, 30, 8, 30))
    assert replan(cursor, calendar, [jst(2026, 11, 30, 8, 0)]) == Cursor(
        Phase.FRESH, 0, jst(2026, 12, 1, 8, 30)
    )


def test_replan_moves_parked_cursor_and_keeps_its_budget(calendar: BusinessCalendar) -> None:
    cursor = Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30))
    assert replan(cursor, calendar, [jst(2026, 11, 30, 7, 0)]) == Cursor(
        Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30)
    )
    # Friday's signal before Monday's opening moves it past the weekend... to Monday.
    fri = Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 27, 8, 30))
    assert replan(fri, calendar, [jst(2026, 11, 27, 8, 10)]) == Cursor(
        Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30)
    )


# --- properties (hypothesis) -------------------------------------------------------------------

START = datetime(2026, 1, 1, tzinfo=JST)
SPAN_MIN = 3 * 365 * 24 * 60  # 2026 .. 2028

_JP = holidays.country_holidays("JP")


def _is_business_day(day: date) -> bool:
    """Independent of calendar.py: Mon–Fri, no national holiday, no 12/29–1/3."""
    year_end = (day.month == 12 and day.day >= 29) or (day.month == 1 and day.day <= 3)
    return day.weekday() < 5 and day not in _JP and not year_end


whole_minutes = st.integers(0, SPAN_MIN - 1).map(lambda m: START + timedelta(minutes=m))
with_seconds = st.integers(0, SPAN_MIN * 60 - 1).map(lambda s: START + timedelta(seconds=s))
detections = st.one_of(whole_minutes, with_seconds)


@st.composite
def detection_and_signals(draw: st.DrawFn) -> tuple[datetime, list[datetime]]:
    detected = draw(detections)
    count = draw(st.integers(0, 2))
    signals = []
    for _ in range(count):
        day = detected.date() + timedelta(days=draw(st.integers(0, 3)))
        minute = draw(st.integers(0, 24 * 60 - 1))
        signals.append(
            datetime(day.year, day.month, day.day, tzinfo=JST) + timedelta(minutes=minute)
        )
    return detected, signals


def _oracle(detected: datetime, signals: list[datetime]) -> tuple[list[datetime], int | None]:
    """A brute-force reading of R6–R13 with default settings, minute by minute."""

    def close(day: date) -> datetime:
        c = datetime(day.year, day.month, day.day, 16, 0, tzinfo=JST)
        return min([c, *(s for s in signals if s.astimezone(JST).date() == day)])

    def day_slots(day: date) -> list[datetime]:
        if not _is_business_day(day):
            return []
        first = datetime(day.year, day.month, day.day, 8, 30, tzinfo=JST)
        return [
            first + timedelta(minutes=10 * k)
            for k in range(60)
            if first + timedelta(minutes=10 * k) < close(day)
        ]

    def next_opening(day: date) -> datetime:
        day += timedelta(days=1)
        while not day_slots(day):
            day += timedelta(days=1)
        return day_slots(day)[0]

    local = detected.astimezone(JST)
    today = local.date()
    opening = datetime(today.year, today.month, today.day, 8, 30, tzinfo=JST)
    in_hours = _is_business_day(today) and opening <= local < close(today)
    if in_hours:
        todays = [s for s in day_slots(today) if s > local][:6]  # R7
    elif local < opening and day_slots(today):
        todays = day_slots(today)[:6]  # R13 same day
    else:
        nxt = next_opening(today)  # R13 next business day
        today = nxt.date()
        todays = day_slots(today)[:6]
    if len(todays) == 6:
        return todays, None
    return [*todays, next_opening(today)], len(todays)  # R10/R11/R12


PROPS = settings(max_examples=300, deadline=None, derandomize=True)


@PROPS
@given(detection_and_signals())
def test_property_plan_rules(case: tuple[datetime, list[datetime]]) -> None:
    detected, signals = case
    plan = plan_attempts(detected, DEFAULT, signals)
    attempts = list(plan.attempts)
    local_day = detected.astimezone(JST).date()
    # R6: every attempt on the grid, inside review hours of a business day.
    for a in attempts:
        assert DEFAULT.is_slot(a, signals), a
        assert DEFAULT.in_review_hours(a, signals), a
        assert _is_business_day(a.date())
        assert a.utcoffset() == NINE_HOURS
    # R7: strictly increasing, strictly after detection.
    assert all(x < y for x, y in pairwise(attempts))
    assert attempts[0] > detected
    # R7: at most 6 on the detection day, at most 6 in all.
    assert sum(1 for a in attempts if a.date() == local_day) <= 6
    assert 1 <= len(attempts) <= 6
    if plan.parked_after is None:
        assert len(attempts) == 6
        assert len({a.date() for a in attempts}) == 1
    else:
        # R11: exactly one attempt after parking, at the opening of a later day.
        assert len(attempts) == plan.parked_after + 1
        last = attempts[-1]
        assert (last.hour, last.minute, last.second) == (8, 30, 0)
        if plan.parked_after:
            assert last.date() > attempts[-2].date()
    # R7: attempts of one day follow each other slot by slot.
    same_day = attempts if plan.parked_after is None else attempts[:-1]
    for x, y in pairwise(same_day):
        assert y - x == timedelta(minutes=10)
    assert plan.auto_correct_at == attempts[-1]


@PROPS
@given(detection_and_signals())
def test_property_plan_matches_brute_force_reading(case: tuple[datetime, list[datetime]]) -> None:
    detected, signals = case
    plan = plan_attempts(detected, DEFAULT, signals)
    attempts, parked_after = _oracle(detected, signals)
    assert list(plan.attempts) == attempts
    assert plan.parked_after == parked_after


@PROPS
@given(
    day_offset=st.integers(0, 3 * 365 - 1).filter(
        lambda d: _is_business_day(date(2026, 1, 1) + timedelta(days=d))
    ),
    minute_of_window=st.integers(0, 6 * 60 + 30 - 1),  # 08:30 .. 14:59
)
def test_property_r9_auto_correction_51_to_60_minutes(
    day_offset: int, minute_of_window: int
) -> None:
    day = date(2026, 1, 1) + timedelta(days=day_offset)
    detected = datetime(day.year, day.month, day.day, 8, 30, tzinfo=JST) + timedelta(
        minutes=minute_of_window
    )
    plan = plan_attempts(detected, DEFAULT)
    assert plan.parked_after is None
    assert len(plan.attempts) == 6
    delay = plan.auto_correct_at - detected
    assert timedelta(minutes=51) <= delay <= timedelta(minutes=60)


@PROPS
@given(detection_and_signals())
def test_property_start_and_advance_agree_with_plan(case: tuple[datetime, list[datetime]]) -> None:
    # Walking the cursor (as the pipeline does) gives the plan, and replan keeps every cursor.
    detected, signals = case
    cursor: Cursor | None = start_chain(detected, DEFAULT, signals)
    walked = []
    while cursor is not None:
        assert replan(cursor, DEFAULT, signals) == cursor
        walked.append(cursor.slot)
        cursor = advance_chain(cursor, DEFAULT, signals)
    assert walked == list(plan_attempts(detected, DEFAULT, signals).attempts)
