"""The years the calendar can handle (the holiday library's), and what refuses the rest."""

from __future__ import annotations

from datetime import date

import pytest

from retry_pipeline.calendar import BusinessCalendar, check_day, parse_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import CalendarError, InvalidInstant, InvalidReport
from retry_pipeline.messages import parse_report

CALENDAR = BusinessCalendar(Settings())


@pytest.mark.parametrize(
    ("day", "ok"),
    [
        (date(1948, 12, 31), False),
        (date(1949, 1, 1), True),
        (date(2099, 12, 31), True),
        (date(2100, 1, 1), False),
        (date(1, 1, 1), False),
        (date(9999, 12, 31), False),
    ],
)
def test_check_day_and_closure_reason(day: date, ok: bool) -> None:
    if ok:
        check_day(day)
        assert CALENDAR.closure_reason(day) is not None or CALENDAR.is_business_day(day)
    else:
        with pytest.raises(CalendarError, match=f"^{day.isoformat()} is outside the calendar"):
            check_day(day)
        with pytest.raises(CalendarError):
            CALENDAR.is_business_day(day)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "9999-12-31T23:59:00+09:00",
            "is outside the calendar (1949-01-01..2099-12-31 Japan time)",
        ),
        (
            "0001-01-01T00:00:00+09:00",
            "is outside the calendar (1949-01-01..2099-12-31 Japan time)",
        ),
        (
            "2100-01-01T00:00:00+09:00",
            "is outside the calendar (1949-01-01..2099-12-31 Japan time)",
        ),
        ("2026-11-27", "has no time and no UTC offset; write e.g. 2026-11-27T00:00:00+09:00"),
        ("2026-11-27T08:36", "has no UTC offset; write e.g. 2026-11-27T08:36:00+09:00"),
        ("yesterday", "is not an ISO 8601 date-time; write e.g. 2026-11-27T08:36:00+09:00"),
    ],
)
def test_parse_instant_refusals(text: str, message: str) -> None:
    with pytest.raises(InvalidInstant) as caught:
        parse_instant(text)
    assert str(caught.value) == f"{text!r} {message}"


def test_parse_instant_at_both_ends() -> None:
    assert parse_instant("1948-12-31T15:00:00Z").isoformat() == "1949-01-01T00:00:00+09:00"
    assert parse_instant("2099-12-31T23:59:59+09:00").isoformat() == "2099-12-31T23:59:59+09:00"


REPORT = {
    "application": "OSS-1",
    "office": "OFFICE-A",
    "procedure": "continuous",
    "vehicle": "VIN-1",
    "missing": ["safety"],
}


@pytest.mark.parametrize("detected_at", ["0001-01-01T00:00:00+09:00", "9999-12-31T23:59:00+09:00"])
def test_report_outside_the_calendar_is_invalid(detected_at: str) -> None:
    with pytest.raises(InvalidReport, match=r"^detected_at: .* is outside the calendar"):
        parse_report({**REPORT, "detected_at": detected_at})


def test_report_inside_the_calendar_keeps_its_instant_as_sent() -> None:
    report = parse_report({**REPORT, "detected_at": "2026-11-26T23:36:00Z"})
    assert report.detected_at.isoformat() == "2026-11-26T23:36:00+00:00"
