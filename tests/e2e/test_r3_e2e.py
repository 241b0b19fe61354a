"""R3 at every attempt through ``retry-pipeline simulate``, as a user runs it.

The scenario file ``tests/scenarios/r3_at_every_attempt.json`` (Mon 2026-11-30):

- R3-VANISH, the issue's example: missing insurance, confirmed safety, detected
  10:14; the safety certificate is deleted at 10:33 and the insurance never
  arrives. The 10:40 attempt finds the safety certificate gone: auto-corrected,
  naming it (without R3 at every attempt the chain ran to 11:10 naming insurance).
- R3-KEPT, the control: the same with the safety certificate kept and the
  insurance arriving at 10:31: resumed at 10:40.
- R3-INS: missing safety, confirmed insurance deleted at 10:15; the safety
  certificate arrives at 10:21, so the 10:30 attempt can look the insurance up and
  finds it gone: auto-corrected at 10:30, naming insurance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "r3_at_every_attempt.json"

EXPECTED = {
    "applications": [
        {
            "application": "R3-INS",
            "outcome": "auto_corrected",
            "attempts": ["2026-11-30T10:20:00+09:00", "2026-11-30T10:30:00+09:00"],
            "decided_at": "2026-11-30T10:30:00+09:00",
            "missing": ["insurance"],
        },
        {
            "application": "R3-KEPT",
            "outcome": "resumed",
            "attempts": [
                "2026-11-30T10:20:00+09:00",
                "2026-11-30T10:30:00+09:00",
                "2026-11-30T10:40:00+09:00",
            ],
            "decided_at": "2026-11-30T10:40:00+09:00",
            "missing": [],
        },
        {
            "application": "R3-VANISH",
            "outcome": "auto_corrected",
            "attempts": [
                "2026-11-30T10:20:00+09:00",
                "2026-11-30T10:30:00+09:00",
                "2026-11-30T10:40:00+09:00",
            ],
            "decided_at": "2026-11-30T10:40:00+09:00",
            "missing": ["safety"],
        },
    ]
}


def test_simulate_r3_scenario_file(any_broker: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("retry-pipeline")),
            "simulate",
            str(SCENARIO),
            "--broker-url",
            any_broker,
            "--workdir",
            str(tmp_path / "run"),
            "--timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    report["applications"].sort(key=lambda e: e["application"])
    assert report == EXPECTED
