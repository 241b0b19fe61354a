"""Beat's entries side by side: the daily dead-letter purge never delays the grid tick.

Beat orders its entries by the seconds each schedule reports; the grid's must be real
seconds, also on a simulation's scaled clock, or the daily purge (hours away in real
time) would sort before a grid tick days away in simulated time and beat would stop
checking the grid (seen in the e2e simulation over the year-end closure).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pendulum
import pytest

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import FileClock
from retry_pipeline.config import Settings
from retry_pipeline.schedules import GridSchedule


def jst(*parts: int) -> datetime:
    return pendulum.datetime(*parts, tz="Asia/Tokyo")


def test_on_a_scaled_clock_the_grid_reports_real_seconds(tmp_path: Path) -> None:
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, jst(2026, 12, 28, 16, 0, 1), 600.0)
    schedule = GridSchedule(BusinessCalendar(Settings(clock_file=str(clock_file))))
    due, next_s = schedule.is_due(jst(2026, 12, 28, 15, 50))
    assert due
    # The next tick is 2027-01-04 08:30 (year-end closure): ~6.7 simulated days,
    # ~16 real minutes at x600 -- far below the purge's hours.
    simulated = (jst(2027, 1, 4, 8, 30) - jst(2026, 12, 28, 16, 0, 1)).total_seconds()
    assert next_s == pytest.approx(simulated / 600, abs=2)
