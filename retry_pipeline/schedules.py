"""Celery beat schedule on the grid of business days (DESIGN 4), via Celery's BaseSchedule."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pendulum
from celery.schedules import BaseSchedule, schedstate

from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.clock import clock_from
from retry_pipeline.errors import CalendarError


def grid_ticks(calendar: BusinessCalendar, day: date) -> list[pendulum.DateTime]:
    """The tick instants of a day: every slot (R6) and the configured OSS close (R10)."""
    slots = calendar.slots(day)
    return [*slots, calendar.close_at(day)] if slots else []


def next_tick_after(calendar: BusinessCalendar, instant: datetime) -> pendulum.DateTime:
    """The first grid tick strictly after ``instant`` (weekends, holidays, 12/29–1/3 skipped)."""
    local = to_local(instant)
    day = local.date()
    for _ in range(400):
        for tick in grid_ticks(calendar, day):
            if tick > local:
                return tick
        day += timedelta(days=1)
    raise CalendarError(f"no grid tick within 400 days after {instant}")


class GridSchedule(BaseSchedule):  # type: ignore[misc]
    """Fires at 08:30, 08:40, … and at the close of business days; never on closed days.

    ``nowfun`` is the pipeline's clock, so beat follows the scaled clock in
    simulations. Beat sleeps at most ``beat_max_loop_interval`` real seconds.
    """

    def __init__(self, calendar: BusinessCalendar, app: Any = None) -> None:
        self.clock = clock_from(calendar.settings.clock_file)
        super().__init__(nowfun=self.clock.now, app=app)
        self.calendar = calendar

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return next_tick_after(self.calendar, last_run_at) - to_local(self.now())

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = to_local(self.now())
        due_at = next_tick_after(self.calendar, last_run_at)
        if due_at <= now:
            # overdue => due now, once; then wait for the next tick after now
            following = next_tick_after(self.calendar, now)
            return schedstate(True, (following - now).total_seconds())
        return schedstate(False, (due_at - now).total_seconds())

    def __repr__(self) -> str:
        s = self.calendar.settings
        return f"<GridSchedule {s.opening}+{s.step_min}min until {s.close}, business days>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.calendar,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GridSchedule) and other.calendar == self.calendar

    def __hash__(self) -> int:
        return hash(self.calendar.settings)


RETRY_BACKOFF_MAX_S = 60.0


def retry_countdown(
    slot: datetime,
    now: datetime,
    step: timedelta,
    retries: int,
    next_tick: datetime | None = None,
) -> float | None:
    """Seconds (on the pipeline's clock) before an undecided slot is tried again.

    Back-off 2, 4, 8 … capped at 60 s, until the grid tick takes over: ``None`` when the
    next try would fall at or after ``next_tick`` (default: the next slot). After the
    close the next tick is the next business day's opening, so the slot keeps trying.
    """
    # The exponent is capped: a weekend of tries (over 1,023) would overflow a float.
    wait = min(2.0 ** (min(max(retries, 0), 16) + 1), RETRY_BACKOFF_MAX_S)
    if now + timedelta(seconds=wait) >= (next_tick if next_tick is not None else slot + step):
        return None
    return wait
