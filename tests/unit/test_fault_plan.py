"""The fault plan (pure): ``flush-queued-reports`` lands just before a report is sent,
``hold-row-lock`` just after one, and only on PostgreSQL."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.cli import main
from retry_pipeline.config import Settings
from simulation.faults import (
    FAULTS,
    HOLD_AFTER,
    QUEUED_LEAD,
    after_reports,
    before_reports,
    faults_for,
    plan_injections,
    refuse_unsupported,
)
from simulation.harness import Options, SimulationError, run_simulation
from simulation.report import held_and_others
from simulation.scenario import Scenario

TOKYO = ZoneInfo("Asia/Tokyo")


@dataclass(frozen=True)
class Sent:
    detected_at: datetime


REPORTS = [Sent(datetime(2026, 11, 27, 8, m, tzinfo=TOKYO)) for m in (36, 51, 58)]
START, END = (
    datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO),
    datetime(2026, 11, 27, 16, 0, tzinfo=TOKYO),
)


def test_faults_added_last_leave_the_others_their_moments() -> None:
    assert FAULTS[-2:] == ("flush-queued-reports", "hold-row-lock")
    cal = BusinessCalendar(Settings())
    for n in (len(FAULTS) - 2, len(FAULTS) - 1):
        with_them = plan_injections(FAULTS, 3, cal, START, END)
        without = plan_injections(FAULTS[:n], 3, cal, START, END)
        assert [i for i in with_them if i.fault in FAULTS[:n]] == without


def test_each_flush_of_queued_reports_comes_a_lead_before_some_report() -> None:
    cal = BusinessCalendar(Settings())
    plan = before_reports(
        plan_injections(FAULTS, 3, cal, START, END), REPORTS, random.Random("3-queued")
    )
    moments = [i.at for i in plan if i.fault == "flush-queued-reports"]
    assert len(moments) == 2
    assert {m + QUEUED_LEAD for m in moments} <= {r.detected_at for r in REPORTS}
    assert plan == sorted(plan, key=lambda i: (i.at, i.fault))
    assert timedelta(minutes=Settings().step_min) > QUEUED_LEAD


def test_each_row_lock_comes_a_minute_after_some_report_and_the_others_keep_theirs() -> None:
    cal = BusinessCalendar(Settings())
    planned = plan_injections(FAULTS, 3, cal, START, END)
    plan = after_reports(planned, REPORTS, random.Random("3-held"))
    moments = [i.at for i in plan if i.fault == "hold-row-lock"]
    assert len(moments) == 2
    assert {m - HOLD_AFTER for m in moments} <= {r.detected_at for r in REPORTS}
    assert [i for i in plan if i.fault != "hold-row-lock"] == [
        i for i in planned if i.fault != "hold-row-lock"
    ]
    assert plan == sorted(plan, key=lambda i: (i.at, i.fault))


def test_a_held_row_lock_is_a_postgresql_fault() -> None:
    assert "hold-row-lock" in faults_for("postgresql")
    assert faults_for("postgresql") == FAULTS
    assert faults_for("sqlite") == tuple(f for f in FAULTS if f != "hold-row-lock")
    refuse_unsupported(FAULTS, "postgresql")
    refuse_unsupported(faults_for("sqlite"), "sqlite")
    with pytest.raises(ValueError, match=r"^hold-row-lock needs PostgreSQL \(--database post"):
        refuse_unsupported(("kill-worker", "hold-row-lock"), "sqlite")


def test_the_simulation_refuses_a_row_lock_on_sqlite_before_starting_anything(
    tmp_path: Path,
) -> None:
    options = Options(faults=("hold-row-lock",), workdir=tmp_path / "run")
    with pytest.raises(SimulationError, match="needs PostgreSQL"):
        run_simulation(Scenario.model_validate(e2e_scenario()), options)
    assert not (tmp_path / "run").exists()  # no process, no database, no workdir


def test_simulate_on_sqlite_refuses_a_row_lock_with_one_line(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(e2e_scenario()))
    args = ["simulate", str(scenario), "--faults", "hold-row-lock"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "hold-row-lock needs PostgreSQL" in result.output
    matrix = ["fault-matrix", str(scenario), "--faults", "hold-row-lock", "--database", "sqlite"]
    result = CliRunner().invoke(main, matrix)
    assert result.exit_code == 2
    assert "hold-row-lock needs PostgreSQL" in result.output


def e2e_scenario() -> dict[str, Any]:
    """One report (the refusal comes before anything runs)."""
    report = {
        "application": "F-1", "office": "O1", "procedure": "continuous", "vehicle": "VF1",
        "missing": ["safety"], "detected_at": "2026-11-27T08:36:00+09:00",
    }  # fmt: skip
    return {"certificates": [], "reports": [report]}


def test_the_others_lateness_counts_only_the_slots_a_lock_lay_across() -> None:
    at = [datetime(2026, 11, 27, h, m, tzinfo=TOKYO) for h, m in ((8, 40), (9, 0), (9, 30))]
    lateness = [("held", at[1], 3), ("a", at[0], 4), ("b", at[1], 1), ("c", at[2], 2)]
    window = (at[1] - timedelta(minutes=5), at[1] + timedelta(minutes=15))
    # a's 4 slots (before the lock, e.g. the run's start) and c's 2 (after) are not the lock's
    assert held_and_others(lateness, {"held"}, [window]) == (3, 1)
    assert held_and_others(lateness, set(), []) == (0, 0)
