"""The business calendar (業務日) and review hours, in Asia/Tokyo ("Calendar and defaults").

Pure: every function takes the instants it needs. National holidays (substitute
振替休日 and citizens' 国民の休日 included) come from the ``holidays`` library; the
year-end closure 12/29–1/3 and configured closure dates are added here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cache
from typing import Any, Literal

import holidays
import pendulum

from retry_pipeline.config import TIMEZONE, Settings
from retry_pipeline.errors import CalendarError, InvalidInstant

TZ = pendulum.timezone(TIMEZONE)
JAPAN_OFFSET = timezone(timedelta(hours=9))  # Asia/Tokyo since 1888, no daylight saving
HORIZON_DAYS = 400  # longest search for a working day; more means a broken calendar
# The years whose national holidays the library knows; outside them every weekday
# would look like a business day, so the calendar refuses those dates.
_JAPAN = holidays.country_holidays("JP")
FIRST_YEAR: int = _JAPAN.start_year
LAST_YEAR: int = _JAPAN.end_year
RANGE_TEXT = f"{FIRST_YEAR}-01-01..{LAST_YEAR}-12-31 Japan time"

Language = Literal["ja", "en"]
LANGUAGES: tuple[Language, ...] = ("ja", "en")
_HOLIDAY_LANGUAGE = {"ja": "ja", "en": "en_US"}
_REASONS: dict[str, dict[Language, str]] = {
    "weekend": {"en": "weekend", "ja": "週末"},
    "holiday": {"en": "national holiday: {name}", "ja": "祝日: {name}"},
    "year_end": {"en": "year-end closure", "ja": "年末年始の閉庁"},
    "configured": {"en": "configured closure", "ja": "設定された閉庁日"},
}


@cache
def _national_holidays(language: Language) -> Any:
    """Japanese national holidays (substitute and citizens' holidays included), named."""
    return holidays.country_holidays("JP", language=_HOLIDAY_LANGUAGE[language])


def check_day(day: date) -> None:
    """Refuse a day outside the years the calendar knows (CalendarError)."""
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise CalendarError(
            f"{day.isoformat()} is outside the calendar ({RANGE_TEXT}: "
            "the years whose national holidays are known)"
        )


def to_local(instant: datetime) -> pendulum.DateTime:
    """The instant in Japan time; naive datetimes are refused, never guessed."""
    return _local_of(instant, _offset(instant))


def _offset(instant: datetime) -> timedelta:
    offset = instant.utcoffset() if instant.tzinfo is not None else None
    if offset is None:
        raise InvalidInstant(f"{instant.isoformat()} has no UTC offset")
    return offset


@functools.lru_cache(maxsize=4096)  # a slot's thousands of chains share a few instants
def _local_of(instant: datetime, offset: timedelta) -> pendulum.DateTime:
    # Memoized with the offset in the key: two datetimes of one zone that differ only in
    # ``fold`` (a DST zone's repeated hour) compare equal but are different instants, and
    # their offsets differ. (Converting to UTC first, for the key, cost more than the rest.)
    return pendulum.instance(instant).in_timezone(TZ)


def parse_instant(text: str) -> pendulum.DateTime:
    """Parse ISO 8601 with an offset (``Z`` accepted) into Japan time.

    Only instants the calendar can handle: their Japan date in FIRST_YEAR..LAST_YEAR.
    """
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInstant(
            f"{text!r} is not an ISO 8601 date-time; write e.g. 2026-11-27T08:36:00+09:00"
        ) from None
    if parsed.tzinfo is None and FIRST_YEAR <= parsed.year <= LAST_YEAR:
        example = parsed.replace(tzinfo=JAPAN_OFFSET).isoformat()
        what = "no time and no UTC offset" if len(text.strip()) <= 10 else "no UTC offset"
        raise InvalidInstant(f"{text!r} has {what}; write e.g. {example}")
    if parsed.tzinfo is None:
        raise InvalidInstant(
            f"{text!r} has no UTC offset and is outside the calendar ({RANGE_TEXT})"
        )
    try:
        local = to_local(parsed)
        check_day(local.date())
    except (OverflowError, ValueError, CalendarError):
        raise InvalidInstant(f"{text!r} is outside the calendar ({RANGE_TEXT})") from None
    return local


def format_instant(instant: datetime) -> str:
    """ISO 8601 in Japan time with the +09:00 offset."""
    return _format_of(instant, instant.fold)


@functools.lru_cache(maxsize=4096)  # a release's outcomes share their slot's instant
def _format_of(instant: datetime, fold: int) -> str:
    # Keyed by the instant and its fold: aware datetimes compare (and hash) as instants,
    # except two of one zone that differ only in ``fold``, which compare equal; equal
    # instants read the same in Japan time. (Asking for the offset first, as ``to_local``
    # does, cost a pendulum instance more than the rest.)
    return _local_of(instant, _offset(instant)).isoformat()  # (pendulum's isoformat: Python)


@dataclass(frozen=True)
class BusinessCalendar:
    """Business days, review hours and the grid, for one set of settings."""

    settings: Settings

    def closure_reason(self, day: date, language: Language = "en") -> str | None:
        """Why ``day`` is not a business day, or None when it is one (CalendarError
        outside the years the calendar knows)."""
        check_day(day)
        if day.weekday() >= 5:
            return _REASONS["weekend"][language]
        name = _national_holidays(language).get(day)
        if name:
            return _REASONS["holiday"][language].format(name=name)
        if (day.month == 12 and day.day >= 29) or (day.month == 1 and day.day <= 3):
            return _REASONS["year_end"][language]
        if day in self.settings.extra_closures:
            return _REASONS["configured"][language]
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
        return _cached_next_slot_after(self, to_local(instant), tuple(close_signals))

    def _next_slot_after(
        self, local: pendulum.DateTime, close_signals: tuple[datetime, ...]
    ) -> pendulum.DateTime | None:
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


@functools.lru_cache(maxsize=4096)  # pure: a slot's chains all ask it the same question
def _cached_next_slot_after(
    calendar: BusinessCalendar, local: pendulum.DateTime, close_signals: tuple[datetime, ...]
) -> pendulum.DateTime | None:
    return calendar._next_slot_after(local, close_signals)
