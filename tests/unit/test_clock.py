"""The shared scaled clock of simulations (DESIGN 7)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retry_pipeline.clock import FileClock, FixedClock, SystemClock, clock_from

ORIGIN = datetime(2026, 11, 26, 23, 30, tzinfo=UTC)


def test_file_clock_runs_scaled_from_its_origin(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    FileClock.write(path, ORIGIN, 600.0)
    clock = FileClock(path)
    first = clock.now()
    time.sleep(0.05)
    elapsed = (clock.now() - first).total_seconds()
    assert first >= ORIGIN
    assert 0.05 * 600 * 0.8 <= elapsed <= 0.5 * 600  # about 30 simulated seconds


def test_file_clock_sees_a_jump_written_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    FileClock.write(path, ORIGIN, 600.0)
    clock = FileClock(path)
    assert clock.now() < ORIGIN + timedelta(hours=1)
    FileClock.write(path, ORIGIN + timedelta(days=3), 600.0)
    assert clock.now() >= ORIGIN + timedelta(days=3)


def test_to_real_maps_a_simulated_eta_to_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    FileClock.write(path, ORIGIN, 600.0)
    clock = FileClock(path)
    real = clock.to_real(ORIGIN + timedelta(minutes=10))  # one slot ahead
    assert (real - datetime.now(UTC)).total_seconds() == pytest.approx(1.0, abs=0.2)


def test_clock_from_settings() -> None:
    assert isinstance(clock_from(None), SystemClock)
    assert isinstance(clock_from("/nonexistent/clock.json"), FileClock)


def test_fixed_clock_only_moves_when_told() -> None:
    clock = FixedClock(ORIGIN)
    assert clock.now() == ORIGIN
    clock.advance(90)
    assert clock.now() == ORIGIN + timedelta(seconds=90)
    assert clock.to_real(ORIGIN) == ORIGIN
