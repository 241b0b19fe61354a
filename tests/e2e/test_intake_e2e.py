"""R3 across reports and conflicting reports (R4) through ``retry-pipeline simulate``, as a
user runs it, with the scenario files written for these tests (Fri 2026-11-27).

``tests/scenarios/intake_r3_across_reports.json``:
- INT-R3-ATTEMPT, the issue's example: the 09:40 attempt finds the safety certificate and
  the application resumes; a report at 10:14 says safety is missing: auto-corrected at
  10:14 with no chain (its last outcome; no attempts).
- INT-R3-CONFIRMED: the first report confirmed safety (its chain ends at 09:30 on the
  insurance); a report at 10:05 naming safety missing is auto-corrected at 10:05.
- INT-R3-NOTHING-FOUND, the control: nothing was ever found, so the second report (10:05)
  starts a new chain of six attempts (10:10-11:00).

``tests/scenarios/intake_conflicting_reports.json``:
- INT-CONFLICT-OFFICE / INT-CONFLICT-VEHICLE: a second report (09:05) with another office
  or vehicle is refused (a dead letter, listed under "refused"); the live chain goes on
  unchanged to its 09:30 auto-correction, naming only its own missing certificate.
- INT-MERGE-NEW: a second report that only adds a missing certificate (insurance) merges:
  the completion certificate found at 09:20 does not resume it, the insurance is missing
  at the last attempt (09:30).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
FRI_0836 = [
    f"2026-11-27T{t}:00+09:00" for t in ("08:40", "08:50", "09:00", "09:10", "09:20", "09:30")
]


def simulate(scenario: Path, broker_url: str, workdir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("retry-pipeline")),
            "simulate", str(scenario), "--broker-url", broker_url,
            "--workdir", str(workdir), "--timeout", "400",
        ],
        capture_output=True, text=True, env=env, timeout=500, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report: dict[str, Any] = json.loads(run.stdout)
    report["applications"].sort(key=lambda e: e["application"])
    return report


def test_simulate_r3_across_reports(any_broker: str, tmp_path: Path) -> None:
    report = simulate(SCENARIOS / "intake_r3_across_reports.json", any_broker, tmp_path)
    assert report == {
        "applications": [
            {
                "application": "INT-R3-ATTEMPT",
                "outcome": "auto_corrected",
                "attempts": [],
                "decided_at": "2026-11-27T10:14:00+09:00",
                "missing": ["safety"],
            },
            {
                "application": "INT-R3-CONFIRMED",
                "outcome": "auto_corrected",
                "attempts": [],
                "decided_at": "2026-11-27T10:05:00+09:00",
                "missing": ["safety"],
            },
            {
                "application": "INT-R3-NOTHING-FOUND",
                "outcome": "auto_corrected",
                "attempts": [
                    f"2026-11-27T{t}:00+09:00"
                    for t in ("10:10", "10:20", "10:30", "10:40", "10:50", "11:00")
                ],
                "decided_at": "2026-11-27T11:00:00+09:00",
                "missing": ["safety"],
            },
        ]
    }


def test_simulate_conflicting_reports(any_broker: str, tmp_path: Path) -> None:
    report = simulate(SCENARIOS / "intake_conflicting_reports.json", any_broker, tmp_path)
    assert report == {
        "applications": [
            {
                "application": app,
                "outcome": "auto_corrected",
                "attempts": FRI_0836,
                "decided_at": "2026-11-27T09:30:00+09:00",
                "missing": [missing],
            }
            for app, missing in (
                ("INT-CONFLICT-OFFICE", "safety"),
                ("INT-CONFLICT-VEHICLE", "safety"),
                ("INT-MERGE-NEW", "insurance"),
            )
        ],
        "refused": [
            {
                "task": "retry_pipeline.report_missing",
                "reason": "conflicting report (R4): INT-CONFLICT-OFFICE has a live chain with "
                "office OFFICE-A (this report: OFFICE-B); refused, the live chain is unchanged",
            },
            {
                "task": "retry_pipeline.report_missing",
                "reason": "conflicting report (R4): INT-CONFLICT-VEHICLE has a live chain with "
                "vehicle V-INT-CONFLICT-VEHICLE (this report: V-OTHER); refused, the live "
                "chain is unchanged",
            },
        ],
    }
