"""The beat schedule fires on the grid of business days only (DESIGN 4, R6, R10)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import FileClock
from retry_pipeline.config import Settings
from retry_pipeline.schedules import GridSchedule, grid_ticks, next_tick_after

JST = ZoneInfo("Asia/Tokyo")


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=JST)


def test_grid_ticks_of_a_business_day_are_every_slot_and_the_close(
    calendar: BusinessCalendar,
) -> None:
    ticks = grid_ticks(calendar, date(2026, 11, 27))
    assert ticks[0] == jst(2026, 11, 27, 8, 30)
    assert ticks[1] == jst(2026, 11, 27, 8, 40)
    assert ticks[-2] == jst(2026, 11, 27, 15, 50)  # last slot before the 16:00 close (R6)
    assert ticks[-1] == jst(2026, 11, 27, 16, 0)  # the close itself parks (R10)
    assert len(ticks) == 45 + 1


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 11, 28),  # Saturday
        date(2026, 11, 23),  # Labour Thanksgiving Day
        date(2026, 5, 6),  # substitute holiday
        date(2026, 9, 22),  # citizens' holiday
        date(2026, 12, 30),  # year-end closure
        date(2027, 1, 3),
    ],
)
def test_no_ticks_on_closed_days(calendar: BusinessCalendar, day: date) -> None:
    assert grid_ticks(calendar, day) == []


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (jst(2026, 11, 27, 8, 29, 59), jst(2026, 11, 27, 8, 30)),
        (jst(2026, 11, 27, 8, 30), jst(2026, 11, 27, 8, 40)),  # strictly after
        (jst(2026, 11, 27, 15, 50), jst(2026, 11, 27, 16, 0)),  # the close tick
        (jst(2026, 11, 27, 16, 0), jst(2026, 11, 30, 8, 30)),  # over the weekend
        (jst(2026, 12, 28, 16, 0), jst(2027, 1, 4, 8, 30)),  # over the year-end closure
        (jst(2027, 1, 8, 16, 0), jst(2027, 1, 12, 8, 30)),  # over Coming of Age Day
        (datetime(2026, 11, 26, 23, 45, tzinfo=ZoneInfo("UTC")), jst(2026, 11, 27, 8, 50)),
    ],
)
def test_next_tick_after(calendar: BusinessCalendar, after: datetime, expected: datetime) -> None:
    assert next_tick_after(calendar, after) == expected


def test_configured_closure_has_no_ticks() -> None:
    calendar = BusinessCalendar(Settings(extra_closures=frozenset({date(2026, 11, 30)})))
    assert next_tick_after(calendar, jst(2026, 11, 27, 16, 0)) == jst(2026, 12, 1, 8, 30)


def _schedule_at(tmp_path: Path, now: datetime) -> GridSchedule:
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, now, 1.0)
    return GridSchedule(BusinessCalendar(Settings(clock_file=str(clock_file))))


def test_is_due_when_a_tick_passed_since_the_last_run(tmp_path: Path) -> None:
    schedule = _schedule_at(tmp_path, jst(2026, 11, 27, 8, 40, 1))
    due, next_s = schedule.is_due(jst(2026, 11, 27, 8, 35))
    assert due
    assert next_s == pytest.approx(599, abs=2)  # until 08:50


def test_not_due_between_ticks_and_waits_until_the_next(tmp_path: Path) -> None:
    schedule = _schedule_at(tmp_path, jst(2026, 11, 27, 8, 45))
    due, next_s = schedule.is_due(jst(2026, 11, 27, 8, 40, 0, 500))
    assert not due
    assert next_s == pytest.approx(300, abs=2)


def test_after_a_long_outage_fires_once_then_follows_the_grid(tmp_path: Path) -> None:
    # Beat was down from Friday's close to Monday 09:05: one tick now, not a backlog.
    schedule = _schedule_at(tmp_path, jst(2026, 11, 30, 9, 5))
    due, next_s = schedule.is_due(jst(2026, 11, 27, 15, 50))
    assert due
    assert next_s == pytest.approx(300, abs=2)  # then 09:10


def test_schedule_survives_pickling_for_the_beat_store(tmp_path: Path) -> None:
    import pickle

    schedule = _schedule_at(tmp_path, jst(2026, 11, 27, 9, 0))
    again = pickle.loads(pickle.dumps(schedule))
    assert again == schedule
    assert again.calendar.settings == schedule.calendar.settings
