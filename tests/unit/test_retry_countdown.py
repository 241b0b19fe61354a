"""The slot's back-off after the close: tries every 60 s until the next opening, however
many (a weekend or the year-end closure is thousands), never an overflow."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from retry_pipeline.schedules import RETRY_BACKOFF_MAX_S, retry_countdown

TOKYO = ZoneInfo("Asia/Tokyo")
SLOT = datetime(2026, 12, 25, 15, 50, tzinfo=TOKYO)  # a Friday; the next opening is Monday
STEP = timedelta(minutes=10)


def test_back_off_doubles_then_stays_at_the_cap() -> None:
    now = SLOT + timedelta(minutes=20)
    far = now + timedelta(days=3)
    waits = [retry_countdown(SLOT, now, STEP, n, far) for n in range(8)]
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, RETRY_BACKOFF_MAX_S, 60.0, 60.0]


def test_a_weekend_of_tries_never_overflows() -> None:
    now = SLOT + timedelta(days=2)
    far = now + timedelta(days=3)
    for retries in (1022, 1023, 5000, 10**6):
        assert retry_countdown(SLOT, now, STEP, retries, far) == RETRY_BACKOFF_MAX_S


def test_the_next_tick_takes_over() -> None:
    now = SLOT + timedelta(seconds=30)
    assert retry_countdown(SLOT, now, STEP, 5000, now + timedelta(seconds=59)) is None
