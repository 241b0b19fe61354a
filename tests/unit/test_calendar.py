"""Business days, review hours and the grid ("Calendar and defaults", R6, R10).

Every expected value is a literal date or Japan-time instant worked out by hand
from SPEC.md and the Japanese holiday calendar.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from retry_pipeline.calendar import (
    BusinessCalendar,
    format_instant,
    parse_instant,
    to_local,
)
from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidInstant

JST = ZoneInfo("Asia/Tokyo")
NINE_HOURS = timedelta(hours=9)


def jst(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=JST)


# --- business days -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 11, 27),  # Fri
        date(2026, 11, 30),  # Mon
        date(2026, 4, 30),  # Thu between Showa Day and the May holidays
        date(2026, 5, 1),  # Fri inside Golden Week, a working day
        date(2026, 5, 7),  # Thu, first working day after Golden Week 2026
        date(2026, 12, 28),  # Mon: the year-end closure starts on 12/29
        date(2027, 1, 4),  # Mon: the year-end closure ends on 1/3
        date(2026, 1, 5),  # Mon
        date(2026, 9, 24),  # Thu after the 2026 Silver Week
        date(2019, 5, 7),  # Tue after the 2019 ten-day Golden Week
    ],
)
def test_business_day(calendar: BusinessCalendar, day: date) -> None:
    assert calendar.is_business_day(day)
    assert calendar.closure_reason(day) is None


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 11, 28),  # Sat
        date(2026, 11, 29),  # Sun
        date(2026, 5, 2),  # Sat in Golden Week
        date(2027, 1, 2),  # Sat, also in the year-end closure: weekend is named first
    ],
)
def test_weekend_is_closed(calendar: BusinessCalendar, day: date) -> None:
    assert not calendar.is_business_day(day)
    assert calendar.closure_reason(day) == "weekend"


@pytest.mark.parametrize(
    ("day", "name"),
    [
        (date(2026, 4, 29), "Showa Day"),  # Wed
        (date(2026, 5, 4), "Greenery Day"),  # Mon
        (date(2026, 5, 5), "Children's Day"),  # Tue
        (date(2026, 11, 3), "Culture Day"),  # Tue
        (date(2026, 11, 23), "Labor Thanksgiving Day"),  # Mon
        (date(2026, 9, 21), "Respect for the Aged Day"),  # Mon
        (date(2026, 9, 23), "Autumnal Equinox Day"),  # Wed
        (date(2019, 4, 29), "Showa Day"),  # Mon
        (date(2019, 5, 1), "Emperor's Enthronement Day"),  # Wed, 2019 only
        (date(2027, 1, 1), "New Year's Day"),  # Fri, also in the year-end closure
    ],
)
def test_national_holiday_is_closed(calendar: BusinessCalendar, day: date, name: str) -> None:
    assert day.weekday() < 5  # a weekday, closed only because of the holiday
    assert not calendar.is_business_day(day)
    reason = calendar.closure_reason(day)
    assert reason is not None
    assert reason.startswith("national holiday")
    assert name in reason


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 5, 6),  # Wed: Constitution Day 5/3 fell on a Sunday
        date(2019, 5, 6),  # Mon: Children's Day 5/5 fell on a Sunday
    ],
)
def test_substitute_holiday_is_closed(calendar: BusinessCalendar, day: date) -> None:
    # 振替休日 are business-day closures like any national holiday.
    assert day.weekday() < 5
    assert not calendar.is_business_day(day)
    reason = calendar.closure_reason(day)
    assert reason is not None
    assert reason.startswith("national holiday")


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 9, 22),  # Tue between Respect for the Aged Day and Autumnal Equinox Day
        date(2019, 4, 30),  # Tue between Showa Day and the Enthronement Day
        date(2019, 5, 2),  # Thu between the Enthronement Day and Constitution Day
    ],
)
def test_citizens_holiday_is_closed(calendar: BusinessCalendar, day: date) -> None:
    # 国民の休日: a weekday sandwiched between two national holidays.
    assert day.weekday() < 5
    assert not calendar.is_business_day(day)
    reason = calendar.closure_reason(day)
    assert reason is not None
    assert reason.startswith("national holiday")


def test_golden_week_2026(calendar: BusinessCalendar) -> None:
    closed = [d for d in _days(date(2026, 4, 27), 14) if not calendar.is_business_day(d)]
    assert closed == [
        date(2026, 4, 29),  # Wed Showa Day
        date(2026, 5, 2),  # Sat
        date(2026, 5, 3),  # Sun Constitution Day
        date(2026, 5, 4),  # Mon Greenery Day
        date(2026, 5, 5),  # Tue Children's Day
        date(2026, 5, 6),  # Wed substitute holiday
        date(2026, 5, 9),  # Sat
        date(2026, 5, 10),  # Sun
    ]


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 12, 29),  # Tue
        date(2026, 12, 30),  # Wed
        date(2026, 12, 31),  # Thu
        date(2025, 12, 29),  # Mon
        date(2025, 12, 30),  # Tue
        date(2025, 12, 31),  # Wed
        date(2026, 1, 2),  # Fri
        date(2025, 1, 3),  # Fri
        date(2028, 1, 3),  # Mon
    ],
)
def test_year_end_closure(calendar: BusinessCalendar, day: date) -> None:
    # 12/29–1/3 is not in the holiday library; it must still close weekdays.
    assert day.weekday() < 5
    assert not calendar.is_business_day(day)
    assert calendar.closure_reason(day) == "year-end closure"


def test_year_end_closure_bounds_are_business_days(calendar: BusinessCalendar) -> None:
    # 12/28 and 1/4 are ordinary days when they fall on weekdays.
    assert calendar.is_business_day(date(2026, 12, 28))  # Mon
    assert calendar.is_business_day(date(2027, 1, 4))  # Mon
    assert calendar.is_business_day(date(2024, 12, 28)) is False  # Sat
    assert calendar.is_business_day(date(2028, 1, 4))  # Tue
    assert calendar.is_business_day(date(2027, 12, 28))  # Tue


def test_year_end_2026_listing(calendar: BusinessCalendar) -> None:
    business = [d for d in _days(date(2026, 12, 25), 12) if calendar.is_business_day(d)]
    assert business == [
        date(2026, 12, 25),
        date(2026, 12, 28),
        date(2027, 1, 4),
        date(2027, 1, 5),
    ]


def test_configured_extra_closure() -> None:
    cal = BusinessCalendar(
        Settings(extra_closures=frozenset({date(2026, 11, 27), date(2026, 11, 28)}))
    )
    assert not cal.is_business_day(date(2026, 11, 27))  # a Friday
    assert cal.closure_reason(date(2026, 11, 27)) == "configured closure"
    assert cal.closure_reason(date(2026, 11, 28)) == "weekend"  # Sat anyway
    assert cal.is_business_day(date(2026, 11, 26))
    assert cal.is_business_day(date(2026, 11, 30))
    # The closure moves the next opening after Thursday to Monday.
    assert cal.next_opening(date(2026, 11, 26)) == jst(2026, 11, 30, 8, 30)


def test_extra_closures_do_not_leak_into_default_calendar(calendar: BusinessCalendar) -> None:
    assert calendar.is_business_day(date(2026, 11, 27))


# --- opening, close and close signals (R10) ---------------------------------------------


def test_opening_and_close_defaults(calendar: BusinessCalendar) -> None:
    day = date(2026, 11, 27)
    assert calendar.opening_at(day) == jst(2026, 11, 27, 8, 30)
    assert calendar.close_at(day) == jst(2026, 11, 27, 16, 0)
    assert calendar.opening_at(day).utcoffset() == NINE_HOURS
    assert calendar.close_at(day).utcoffset() == NINE_HOURS


def test_opening_and_close_follow_settings() -> None:
    cal = BusinessCalendar(Settings(opening=time(9, 0), close=time(12, 0)))
    assert cal.opening_at(date(2026, 11, 27)) == jst(2026, 11, 27, 9, 0)
    assert cal.close_at(date(2026, 11, 27)) == jst(2026, 11, 27, 12, 0)


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ((), jst(2026, 11, 30, 16, 0)),
        ((jst(2026, 11, 30, 10, 45),), jst(2026, 11, 30, 10, 45)),  # earlier signal wins
        ((jst(2026, 11, 30, 16, 30),), jst(2026, 11, 30, 16, 0)),  # later one ignored
        ((jst(2026, 11, 30, 16, 0),), jst(2026, 11, 30, 16, 0)),  # equal: same close
        ((jst(2026, 11, 27, 10, 0),), jst(2026, 11, 30, 16, 0)),  # other day ignored
        ((jst(2026, 12, 1, 10, 0),), jst(2026, 11, 30, 16, 0)),  # other day ignored
        (  # several: the earliest on the day
            (jst(2026, 11, 30, 14, 0), jst(2026, 11, 30, 11, 5), jst(2026, 11, 30, 12, 0)),
            jst(2026, 11, 30, 11, 5),
        ),
        ((jst(2026, 11, 30, 7, 0),), jst(2026, 11, 30, 7, 0)),  # before the opening
    ],
)
def test_close_at_with_signals(
    calendar: BusinessCalendar, signals: tuple[datetime, ...], expected: datetime
) -> None:
    assert calendar.close_at(date(2026, 11, 30), signals) == expected


def test_close_signal_in_utc_counts_on_its_tokyo_date(calendar: BusinessCalendar) -> None:
    # 2026-11-30T01:45Z is Mon 10:45 in Tokyo.
    signal = datetime(2026, 11, 30, 1, 45, tzinfo=UTC)
    assert calendar.close_at(date(2026, 11, 30), [signal]) == jst(2026, 11, 30, 10, 45)
    # 2026-11-29T23:50Z is already Mon 08:50 in Tokyo (Sunday in UTC).
    early = datetime(2026, 11, 29, 23, 50, tzinfo=UTC)
    assert calendar.close_at(date(2026, 11, 30), [early]) == jst(2026, 11, 30, 8, 50)
    assert calendar.slots(date(2026, 11, 30), [early]) == [
        jst(2026, 11, 30, 8, 30),
        jst(2026, 11, 30, 8, 40),
    ]
    # 2026-11-30T20:00Z is Tue 12-01 05:00 in Tokyo: it closes Tuesday, not Monday.
    late = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
    assert calendar.close_at(date(2026, 11, 30), [late]) == jst(2026, 11, 30, 16, 0)
    assert calendar.close_at(date(2026, 12, 1), [late]) == jst(2026, 12, 1, 5, 0)
    assert not calendar.has_review_hours(date(2026, 12, 1), [late])


def test_has_review_hours(calendar: BusinessCalendar) -> None:
    assert calendar.has_review_hours(date(2026, 11, 30))
    assert not calendar.has_review_hours(date(2026, 11, 29))  # Sun
    assert not calendar.has_review_hours(date(2026, 11, 30), [jst(2026, 11, 30, 8, 0)])
    assert not calendar.has_review_hours(date(2026, 11, 30), [jst(2026, 11, 30, 8, 30)])
    assert calendar.has_review_hours(date(2026, 11, 30), [jst(2026, 11, 30, 8, 31)])


# --- review hours -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "inside"),
    [
        (jst(2026, 11, 27, 8, 29, 59), False),
        (jst(2026, 11, 27, 8, 30), True),  # the opening is inclusive
        (jst(2026, 11, 27, 8, 30, 1), True),
        (jst(2026, 11, 27, 12, 0), True),
        (jst(2026, 11, 27, 15, 59, 59), True),
        (jst(2026, 11, 27, 16, 0), False),  # the close is exclusive
        (jst(2026, 11, 27, 23, 59), False),
        (jst(2026, 11, 27, 0, 0), False),
        (jst(2026, 11, 28, 10, 0), False),  # Sat
        (jst(2026, 5, 6, 10, 0), False),  # substitute holiday
        (jst(2026, 12, 29, 10, 0), False),  # year-end closure
        (jst(2026, 12, 28, 10, 0), True),
        (datetime(2026, 11, 26, 23, 30, tzinfo=UTC), True),  # Fri 08:30 JST
        (datetime(2026, 11, 26, 23, 29, 59, tzinfo=UTC), False),  # Fri 08:29:59 JST
        (datetime(2026, 11, 27, 7, 0, tzinfo=UTC), False),  # Fri 16:00 JST
        (datetime(2026, 11, 27, 6, 59, 59, tzinfo=UTC), True),  # Fri 15:59:59 JST
    ],
)
def test_in_review_hours(calendar: BusinessCalendar, instant: datetime, inside: bool) -> None:
    assert calendar.in_review_hours(instant) is inside


@pytest.mark.parametrize(
    ("instant", "inside"),
    [
        (jst(2026, 11, 30, 10, 44, 59), True),
        (jst(2026, 11, 30, 10, 45), False),  # the signal is the close: exclusive
        (jst(2026, 11, 30, 12, 0), False),
        (jst(2026, 11, 30, 8, 30), True),
    ],
)
def test_in_review_hours_with_close_signal(
    calendar: BusinessCalendar, instant: datetime, inside: bool
) -> None:
    signals = [jst(2026, 11, 30, 10, 45)]
    assert calendar.in_review_hours(instant, signals) is inside


def test_close_signal_after_configured_close_does_not_extend_hours(
    calendar: BusinessCalendar,
) -> None:
    assert not calendar.in_review_hours(jst(2026, 11, 30, 16, 10), [jst(2026, 11, 30, 17, 0)])


def test_close_signal_on_other_day_does_not_shorten_hours(calendar: BusinessCalendar) -> None:
    assert calendar.in_review_hours(jst(2026, 11, 30, 12, 0), [jst(2026, 11, 27, 10, 0)])


# --- the grid (R6, R7) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (jst(2026, 11, 27, 8, 36), jst(2026, 11, 27, 8, 40)),
        (jst(2026, 11, 27, 8, 40), jst(2026, 11, 27, 8, 50)),  # exactly on a slot: next one
        (jst(2026, 11, 27, 8, 39, 59), jst(2026, 11, 27, 8, 40)),  # one second before
        (jst(2026, 11, 27, 8, 30), jst(2026, 11, 27, 8, 40)),  # the opening itself
        (jst(2026, 11, 27, 8, 29, 59), jst(2026, 11, 27, 8, 30)),  # before opening
        (jst(2026, 11, 27, 0, 0), jst(2026, 11, 27, 8, 30)),  # before opening
        (jst(2026, 11, 27, 15, 49, 59), jst(2026, 11, 27, 15, 50)),
        (jst(2026, 11, 27, 15, 40), jst(2026, 11, 27, 15, 50)),
        (jst(2026, 11, 27, 15, 50), None),  # last slot before the 16:00 close
        (jst(2026, 11, 27, 15, 55), None),
        (jst(2026, 11, 27, 16, 0), None),
        (jst(2026, 11, 27, 20, 0), None),
        (jst(2026, 11, 28, 10, 0), None),  # Sat: no grid
        (jst(2026, 9, 22, 7, 0), None),  # citizens' holiday: no grid
        (datetime(2026, 11, 26, 23, 36, tzinfo=UTC), jst(2026, 11, 27, 8, 40)),
        (datetime(2026, 11, 27, 8, 36, tzinfo=timezone(NINE_HOURS)), jst(2026, 11, 27, 8, 40)),
    ],
)
def test_next_slot_after(
    calendar: BusinessCalendar, instant: datetime, expected: datetime | None
) -> None:
    got = calendar.next_slot_after(instant)
    assert got == expected
    if got is not None:
        assert got.utcoffset() == NINE_HOURS


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (jst(2026, 11, 30, 10, 30), jst(2026, 11, 30, 10, 40)),
        (jst(2026, 11, 30, 10, 39, 59), jst(2026, 11, 30, 10, 40)),
        (jst(2026, 11, 30, 10, 40), None),  # 10:50 is after the 10:45 close signal
        (jst(2026, 11, 30, 10, 44), None),
    ],
)
def test_next_slot_after_with_close_signal(
    calendar: BusinessCalendar, instant: datetime, expected: datetime | None
) -> None:
    assert calendar.next_slot_after(instant, [jst(2026, 11, 30, 10, 45)]) == expected


def test_next_slot_after_signal_exactly_on_a_slot(calendar: BusinessCalendar) -> None:
    # A close at 10:40 means no attempt at 10:40 (R10: none at or after it).
    signals = [jst(2026, 11, 30, 10, 40)]
    assert calendar.next_slot_after(jst(2026, 11, 30, 10, 25), signals) == jst(2026, 11, 30, 10, 30)
    assert calendar.next_slot_after(jst(2026, 11, 30, 10, 30), signals) is None


def test_next_slot_after_with_other_step() -> None:
    cal = BusinessCalendar(Settings(step_min=15, close=time(12, 0)))
    assert cal.next_slot_after(jst(2026, 11, 27, 8, 36)) == jst(2026, 11, 27, 8, 45)
    assert cal.next_slot_after(jst(2026, 11, 27, 8, 45)) == jst(2026, 11, 27, 9, 0)
    assert cal.next_slot_after(jst(2026, 11, 27, 11, 30)) == jst(2026, 11, 27, 11, 45)
    assert cal.next_slot_after(jst(2026, 11, 27, 11, 45)) is None


def test_slots_of_a_business_day(calendar: BusinessCalendar) -> None:
    slots = calendar.slots(date(2026, 11, 27))
    # 08:30 .. 15:50 every 10 minutes: 7 h 30 min / 10 min = 45 slots.
    assert len(slots) == 45
    assert slots[0] == jst(2026, 11, 27, 8, 30)
    assert slots[1] == jst(2026, 11, 27, 8, 40)
    assert slots[-1] == jst(2026, 11, 27, 15, 50)
    assert all(b - a == timedelta(minutes=10) for a, b in pairwise(slots))


def test_slots_with_close_signal(calendar: BusinessCalendar) -> None:
    assert calendar.slots(date(2026, 11, 30), [jst(2026, 11, 30, 9, 5)]) == [
        jst(2026, 11, 30, 8, 30),
        jst(2026, 11, 30, 8, 40),
        jst(2026, 11, 30, 8, 50),
        jst(2026, 11, 30, 9, 0),
    ]
    assert calendar.slots(date(2026, 11, 30), [jst(2026, 11, 30, 9, 0)]) == [
        jst(2026, 11, 30, 8, 30),
        jst(2026, 11, 30, 8, 40),
        jst(2026, 11, 30, 8, 50),
    ]
    assert calendar.slots(date(2026, 11, 30), [jst(2026, 11, 30, 8, 0)]) == []


@pytest.mark.parametrize(
    "day", [date(2026, 11, 28), date(2026, 5, 6), date(2026, 12, 31), date(2019, 4, 30)]
)
def test_slots_of_a_closed_day_are_empty(calendar: BusinessCalendar, day: date) -> None:
    assert calendar.slots(day) == []


def test_slots_with_custom_settings() -> None:
    cal = BusinessCalendar(Settings(step_min=15, close=time(9, 30)))
    assert cal.slots(date(2026, 11, 27)) == [
        jst(2026, 11, 27, 8, 30),
        jst(2026, 11, 27, 8, 45),
        jst(2026, 11, 27, 9, 0),
        jst(2026, 11, 27, 9, 15),
    ]


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (jst(2026, 11, 27, 8, 30), True),
        (jst(2026, 11, 27, 8, 40), True),
        (jst(2026, 11, 27, 15, 50), True),
        (jst(2026, 11, 27, 16, 0), False),  # the close is not a slot
        (jst(2026, 11, 27, 8, 20), False),  # before opening
        (jst(2026, 11, 27, 8, 35), False),  # off the grid
        (jst(2026, 11, 27, 8, 40, 1), False),
        (jst(2026, 11, 28, 8, 30), False),  # Sat
        (datetime(2026, 11, 26, 23, 40, tzinfo=UTC), True),  # Fri 08:40 JST
    ],
)
def test_is_slot(calendar: BusinessCalendar, instant: datetime, expected: bool) -> None:
    assert calendar.is_slot(instant) is expected


def test_is_slot_respects_close_signal(calendar: BusinessCalendar) -> None:
    signals = [jst(2026, 11, 30, 10, 45)]
    assert calendar.is_slot(jst(2026, 11, 30, 10, 40), signals)
    assert not calendar.is_slot(jst(2026, 11, 30, 10, 50), signals)


# --- next opening --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "inclusive", "expected"),
    [
        (date(2026, 11, 27), False, jst(2026, 11, 30, 8, 30)),  # Fri -> Mon
        (date(2026, 11, 27), True, jst(2026, 11, 27, 8, 30)),  # inclusive: same day
        (date(2026, 11, 28), True, jst(2026, 11, 30, 8, 30)),  # Sat inclusive -> Mon
        (date(2026, 11, 30), False, jst(2026, 12, 1, 8, 30)),
        (date(2026, 12, 28), False, jst(2027, 1, 4, 8, 30)),  # across the year-end closure
        (date(2026, 12, 25), False, jst(2026, 12, 28, 8, 30)),
        (date(2026, 4, 28), False, jst(2026, 4, 30, 8, 30)),  # skips Showa Day
        (date(2026, 5, 1), False, jst(2026, 5, 7, 8, 30)),  # across Golden Week
        (date(2026, 9, 18), False, jst(2026, 9, 24, 8, 30)),  # across Silver Week 2026
        (date(2019, 4, 26), False, jst(2019, 5, 7, 8, 30)),  # ten-day Golden Week 2019
    ],
)
def test_next_opening(
    calendar: BusinessCalendar, after: date, inclusive: bool, expected: datetime
) -> None:
    got = calendar.next_opening(after, inclusive=inclusive)
    assert got == expected
    assert got.utcoffset() == NINE_HOURS


def test_next_opening_skips_day_closed_before_opening(calendar: BusinessCalendar) -> None:
    # A close signal at Mon 08:00 leaves Monday without review hours.
    signals = [jst(2026, 11, 30, 8, 0)]
    assert calendar.next_opening(date(2026, 11, 27), signals) == jst(2026, 12, 1, 8, 30)
    # ... but one at Mon 08:40 leaves the 08:30 slot.
    assert calendar.next_opening(date(2026, 11, 27), [jst(2026, 11, 30, 8, 40)]) == jst(
        2026, 11, 30, 8, 30
    )
    # A signal exactly at the opening leaves nothing either (close is exclusive).
    assert calendar.next_opening(date(2026, 11, 27), [jst(2026, 11, 30, 8, 30)]) == jst(
        2026, 12, 1, 8, 30
    )


# --- instants -------------------------------------------------------------------------------


def test_naive_datetime_is_refused(calendar: BusinessCalendar) -> None:
    naive = datetime(2026, 11, 27, 8, 36)
    with pytest.raises(InvalidInstant):
        to_local(naive)
    with pytest.raises(InvalidInstant):
        calendar.in_review_hours(naive)
    with pytest.raises(InvalidInstant):
        calendar.next_slot_after(naive)
    with pytest.raises(InvalidInstant):
        calendar.is_slot(naive)
    with pytest.raises(InvalidInstant):
        calendar.close_at(date(2026, 11, 27), [naive])


def test_to_local_converts_to_japan_time() -> None:
    local = to_local(datetime(2026, 11, 26, 23, 36, tzinfo=UTC))
    assert local == jst(2026, 11, 27, 8, 36)
    assert (local.year, local.month, local.day, local.hour, local.minute) == (
        2026,
        11,
        27,
        8,
        36,
    )
    assert local.utcoffset() == NINE_HOURS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T08:36:00+09:00", jst(2026, 11, 27, 8, 36)),
        ("2026-11-26T23:36:00Z", jst(2026, 11, 27, 8, 36)),
        ("2026-11-26T23:36:00+00:00", jst(2026, 11, 27, 8, 36)),
        ("2026-11-26T18:36:00-05:00", jst(2026, 11, 27, 8, 36)),
        ("2026-11-27T05:06:00+05:30", jst(2026, 11, 27, 8, 36)),
        ("  2026-11-27T08:36:00+09:00 ", jst(2026, 11, 27, 8, 36)),
        ("2026-11-27T08:36:30.500000+09:00", datetime(2026, 11, 27, 8, 36, 30, 500000, JST)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    got = parse_instant(text)
    assert got == expected
    assert got.utcoffset() == NINE_HOURS
    assert got.hour == expected.hour and got.minute == expected.minute


@pytest.mark.parametrize("text", ["2026-11-27T08:36:00", "2026-11-27 08:36"])
def test_parse_instant_refuses_naive(text: str) -> None:
    with pytest.raises(InvalidInstant, match="no UTC offset"):
        parse_instant(text)


@pytest.mark.parametrize("text", ["", "tomorrow", "2026-13-01T00:00:00Z", "08:36"])
def test_parse_instant_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidInstant):
        parse_instant(text)


def test_format_instant_uses_japan_offset() -> None:
    assert format_instant(datetime(2026, 11, 26, 23, 36, tzinfo=UTC)) == (
        "2026-11-27T08:36:00+09:00"
    )
    assert format_instant(jst(2026, 11, 30, 8, 30)) == "2026-11-30T08:30:00+09:00"


def _days(first: date, count: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]


def test_to_local_tells_a_dst_zones_repeated_hour_apart() -> None:
    """to_local is memoized: the second 01:30 of New York's fall-back night (fold=1) is
    an hour later than the first, though the two datetimes compare equal."""
    from zoneinfo import ZoneInfo

    from retry_pipeline.calendar import to_local

    first = datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    assert to_local(first).isoformat() == "2026-11-01T14:30:00+09:00"
    assert to_local(first.replace(fold=1)).isoformat() == "2026-11-01T15:30:00+09:00"


def test_format_instant_refuses_a_naive_time_and_tells_fold_apart() -> None:
    with pytest.raises(InvalidInstant):
        format_instant(datetime(2026, 11, 30, 8, 30))
    # memoized by instant and offset: the repeated hour of a DST zone is two instants
    ny = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=ny)
    second = first.replace(fold=1)
    assert first == second  # Python compares wall times of one zone
    assert format_instant(first) == "2026-11-01T14:30:00+09:00"
    assert format_instant(second) == "2026-11-01T15:30:00+09:00"
