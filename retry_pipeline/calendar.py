"""The business calendar (業務日) and review hours, in Asia/Tokyo ("Calendar and defaults").

Pure: every function takes the instants it needs. National holidays (substitute
振替休日 and citizens' 国民の休日 included) come from the ``holidays`` library; the
year-end closure 12/29–1/3 and configured closure dates are added here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property

import holidays
import pendulum

from retry_pipeline.config import TIMEZONE, Settings
from retry_pipeline.errors import CalendarError, InvalidInstant

TZ = pendulum.timezone(TIMEZONE)
HORIZON_DAYS = 400  # longest search for a working day; more means a broken calendar


def to_local(instant: datetime) -> pendulum.DateTime:
    """The instant in Japan time; naive datetimes are refused, never guessed."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise InvalidInstant(f"{instant.isoformat()} has no UTC offset")
    return pendulum.instance(instant).in_timezone(TZ)


def parse_instant(text: str) -> pendulum.DateTime:
    """Parse ISO 8601 with an offset (``Z`` accepted) into Japan time."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInstant(f"{text!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise InvalidInstant(f"{text!r} has no UTC offset; write e.g. {text.strip()}+09:00")
    return to_local(parsed)


def format_instant(instant: datetime) -> str:
    """ISO 8601 in Japan time with the +09:00 offset."""
    return to_local(instant).isoformat()


@dataclass(frozen=True)
class BusinessCalendar:
    """Business days, review hours and the grid, for one set of settings."""

    settings: Settings

    @cached_property
    def _holidays(self) -> holidays.HolidayBase:
        return holidays.country_holidays("JP", language="en_US")

    def closure_reason(self, day: date) -> str | None:
        """Why ``day`` is not a business day, or None when it is one."""
        if day.weekday() >= 5:
            return "weekend"
        name = self._holidays.get(day)
        if name:
            return f"national holiday: {name}"
        if (day.month == 12 and day.day >= 29) or (day.month == 1 and day.day <= 3):
            return "year-end closure"
        if day in self.settings.extra_closures:
            return "configured closure"
        return None

    def is_business_day(self, day: date) -> bool:
        """True when the inspection offices work on ``day``."""
        return self.closure_reason(day) is None

    def opening_at(self, day: date) -> pendulum.DateTime:
        """08:30 (開局) of ``day`` in Japan time."""
        o = self.settings.opening
        return pendulum.datetime(day.year, day.month, day.day, o.hour, o.minute, tz=TZ)

    def close_at(self, day: date, close_signals: Iterable[datetime] = ()) -> pendulum.DateTime:
        """The OSS close of ``day``: the configured time, or the earliest signal before it."""
        c = self.settings.close
        close = pendulum.datetime(day.year, day.month, day.day, c.hour, c.minute, tz=TZ)
        for signal in close_signals:
            local = to_local(signal)
            if local.date() == day and local < close:
                close = local
        return close

    def has_review_hours(self, day: date, close_signals: Iterable[datetime] = ()) -> bool:
        """A business day whose close comes after its opening."""
        return self.is_business_day(day) and self.opening_at(day) < self.close_at(
            day, close_signals
        )

    def in_review_hours(self, instant: datetime, close_signals: Iterable[datetime] = ()) -> bool:
        """Opening (inclusive) to OSS close (exclusive) of a business day."""
        local = to_local(instant)
        day = local.date()
        return self.is_business_day(day) and self.opening_at(day) <= local < self.close_at(
            day, close_signals
        )

    def next_slot_after(
        self, instant: datetime, close_signals: Iterable[datetime] = ()
    ) -> pendulum.DateTime | None:
        """R6/R7: the first grid slot strictly after ``instant`` on its own day, if before close."""
        local = to_local(instant)
        day = local.date()
        if not self.is_business_day(day):
            return None
        opening = self.opening_at(day)
        step_s = self.settings.step_min * 60
        if local < opening:
            slot = opening
        else:
            passed = int((local - opening).total_seconds() // step_s) + 1
            slot = opening.add(seconds=passed * step_s)
        return slot if slot < self.close_at(day, close_signals) else None

    def slots(self, day: date, close_signals: Iterable[datetime] = ()) -> list[pendulum.DateTime]:
        """Every grid slot of ``day`` (R6), empty on a closed day."""
        if not self.is_business_day(day):
            return []
        close = self.close_at(day, close_signals)
        out: list[pendulum.DateTime] = []
        slot = self.opening_at(day)
        while slot < close:
            out.append(slot)
            slot = slot.add(minutes=self.settings.step_min)
        return out

    def is_slot(self, instant: datetime, close_signals: Iterable[datetime] = ()) -> bool:
        """True when ``instant`` is a grid slot inside review hours."""
        local = to_local(instant)
        return local in self.slots(local.date(), close_signals)

    def next_opening(
        self, after: date, close_signals: Iterable[datetime] = (), *, inclusive: bool = False
    ) -> pendulum.DateTime:
        """Opening of the first business day with review hours after (or on) ``after``."""
        signals = tuple(close_signals)
        day = after if inclusive else after + timedelta(days=1)
        for _ in range(HORIZON_DAYS):
            if self.has_review_hours(day, signals):
                return self.opening_at(day)
            day += timedelta(days=1)
        raise CalendarError(f"no business day within {HORIZON_DAYS} days after {after}")
