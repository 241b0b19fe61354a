"""The OSS close (R10): at the close every live chain still slotted that day is parked."""

from __future__ import annotations

from datetime import datetime

from retry_pipeline.calendar import format_instant, to_local
from retry_pipeline.errors import InvalidInstant
from retry_pipeline.service.context import Deps, close_signals
from retry_pipeline.service.slots import reschedule


def park_if_closed(deps: Deps, now: datetime) -> int:
    """R10: once today's OSS close has come, park every chain still slotted today."""
    day = to_local(now).date()
    with deps.store.unit() as u:
        signals = close_signals(u, now)
        close = deps.calendar.close_at(day, signals)
        if not deps.calendar.is_business_day(day) or to_local(now) < close:
            return 0
        end_of_day = deps.calendar.opening_at(day).start_of("day").add(days=1)
        chains = u.chains.slotted_between(close, end_of_day)
        return reschedule(deps, u, chains, signals, now, "R10: OSS close")


def record_close(deps: Deps, at: datetime | None = None) -> int:
    """R10: an explicit close signal (default now); parks at once when already due.

    A signal names an instant on the day it is sent, never another day (InvalidInstant).
    """
    now = deps.clock.now()
    today = to_local(now).date()
    if at is not None and to_local(at).date() != today:
        raise InvalidInstant(
            f"{format_instant(at)} is not on today's Japan date ({today.isoformat()}): "
            "a close signal names an instant on the day it is sent (R10)"
        )
    with deps.store.unit() as u:
        u.signals.add(at or now, now)
    return park_if_closed(deps, now)
