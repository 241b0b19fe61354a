"""Real faults in CI (the fast subset; `make faults` runs the whole matrix).

One scenario runs clean, then with every fault of `simulate --faults` injected for
real (worker SIGKILLed, Redis flushed and restarted, beat killed for more than two
slots, two beats at once, a report and an attempt delivered twice, reports queued when
the broker forgets). The report must be the same, and match the rules literally (R8,
R10, R11). On SQLite: the held row lock (PostgreSQL only) is `test_row_lock_e2e.py`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulation.faults import faults_for
from simulation.harness import Options, RunStats, run_simulation
from simulation.scenario import Scenario

pytestmark = pytest.mark.e2e
SQLITE_FAULTS = faults_for("sqlite")  # every fault but hold-row-lock

DAY = "2026-11-27"  # a Friday; the next business day is Monday 2026-11-30

SCENARIO: dict[str, Any] = {
    "certificates": [
        {"id": "S-F2", "kind": "safety", "vehicle": "VF2", "inspected_on": "2026-11-20",
         "insurer_id": "I1", "insurance_no": "NF2", "available_at": f"{DAY}T09:05:00+09:00"},
        {"id": "I-F2", "kind": "insurance", "vehicle": "VF2", "insurer_id": "I1",
         "insurance_no": "NF2", "available_at": "2026-11-20T10:00:00+09:00"},
        {"id": "S-F3", "kind": "safety", "vehicle": "VF3", "inspected_on": "2026-11-26",
         "insurer_id": "I1", "insurance_no": "NF3", "available_at": "2026-11-29T12:00:00+09:00"},
        {"id": "I-F3", "kind": "insurance", "vehicle": "VF3", "insurer_id": "I1",
         "insurance_no": "NF3", "available_at": "2026-11-20T10:00:00+09:00"},
    ],
    "reports": [
        {"application": "F-1", "office": "O1", "procedure": "continuous", "vehicle": "VF1",
         "missing": ["safety"], "detected_at": f"{DAY}T08:36:00+09:00"},
        {"application": "F-2", "office": "O1", "procedure": "continuous", "vehicle": "VF2",
         "missing": ["safety"], "detected_at": f"{DAY}T08:47:00+09:00"},
        {"application": "F-3", "office": "O2", "procedure": "continuous", "vehicle": "VF3",
         "missing": ["safety"], "detected_at": f"{DAY}T15:25:00+09:00"},
        {"application": "F-4", "office": "O2", "procedure": "continuous", "vehicle": "VF4",
         "missing": ["safety"], "detected_at": f"{DAY}T09:12:00+09:00"},
    ],
}  # fmt: skip

EXPECTED = {
    # R9: the notice's example, never found
    "F-1": ("auto_corrected", ["08:40", "08:50", "09:00", "09:10", "09:20", "09:30"], "09:30"),
    # R8: found at the first slot after it reached Kei-MOTAS (09:05 -> 09:10)
    "F-2": ("resumed", ["08:50", "09:00", "09:10"], "09:10"),
    # R10/R11: parked at the close, found at Monday 08:30
    "F-3": ("resumed", ["15:30", "15:40", "15:50", "08:30"], "08:30"),
    "F-4": ("auto_corrected", ["09:20", "09:30", "09:40", "09:50", "10:00", "10:10"], "10:10"),
}


def _run(
    broker_url: str, workdir: Path, faults: tuple[str, ...]
) -> tuple[dict[str, Any], RunStats]:
    options = Options(
        time_scale=600.0,
        broker_url=broker_url,
        workdir=workdir,
        timeout_s=240,  # before pytest-timeout's 300 s: the error shows the logs
        faults=faults,
        fault_seed=5,
    )
    return run_simulation(Scenario.model_validate(SCENARIO), options)


@pytest.fixture(scope="module")
def clean(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], RunStats]:
    return _run(broker_url, tmp_path_factory.mktemp("clean"), ())


@pytest.fixture(scope="module")
def faulted(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], RunStats]:
    return _run(broker_url, tmp_path_factory.mktemp("faults"), SQLITE_FAULTS)


def _brief(report: dict[str, Any]) -> dict[str, tuple[str, list[str], str]]:
    return {
        a["application"]: (a["outcome"], [s[11:16] for s in a["attempts"]], a["decided_at"][11:16])
        for a in report["applications"]
    }


def test_clean_run_follows_the_rules(clean: tuple[dict[str, Any], RunStats]) -> None:
    assert _brief(clean[0]) == EXPECTED
    assert clean[0]["applications"][2]["decided_at"] == "2026-11-30T08:30:00+09:00"


def test_every_fault_was_injected(faulted: tuple[dict[str, Any], RunStats]) -> None:
    stats = faulted[1]
    assert set(stats.faults.injected) == set(SQLITE_FAULTS)
    assert all(n >= 1 for n in stats.faults.injected.values())


def test_report_with_faults_is_identical(
    clean: tuple[dict[str, Any], RunStats], faulted: tuple[dict[str, Any], RunStats]
) -> None:
    assert json.dumps(faulted[0], sort_keys=True) == json.dumps(clean[0], sort_keys=True)


def test_nothing_doubled(faulted: tuple[dict[str, Any], RunStats]) -> None:
    stats = faulted[1]
    assert stats.endings_per_chain == 1  # no chain ended twice
    assert stats.outcomes_per_application == {app: 1 for app in EXPECTED}
