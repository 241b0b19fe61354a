"""``retry-pipeline simulate`` prints what it printed before the harness moved (issue 8).

``tests/fixtures/demo-report.json`` is the stdout of ``retry-pipeline simulate`` on
``tests/fixtures/demo-scenario.json`` (``scenario post-holiday --applications 40
--seed 11``), recorded from ``retry_pipeline/sim`` before it became ``simulation/``.
The report has no variable field: attempts judge certificates as of their slot.
Wall time, restarts and lateness go to stderr.

``demo-table-seed7.txt`` is ``make run``'s table (``demo --applications 300 --seed 7``,
without its last two lines: file paths and wall time) from the same moment, and the
demo must print it again. Two things made it drift on a loaded machine, both fixed:
reports were stamped when a lagging harness loop sent them (so they looked late, R4a),
and certificates were written when the loop got to them (after an attempt that should
have seen them). Now each report carries the scenario's instant and every certificate
row is written up front with its own times (attempts read Kei-MOTAS as of their slot);
two demos run at once on 2 cores printed this table both times.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import pipeline_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLI = [sys.executable, "-m", "retry_pipeline.cli"]


def _cli(cwd: Path, *args: str) -> bytes:
    """The stdout of ``retry-pipeline *args`` run in ``cwd``, which must exit 0."""
    env = pipeline_env(pythonpath=False)
    done = subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout


def test_simulate_prints_the_recorded_report_byte_for_byte(any_broker: str, tmp_path: Path) -> None:
    stdout = _cli(
        tmp_path, "simulate", str(FIXTURES / "demo-scenario.json"), "--broker-url", any_broker
    )
    assert stdout == (FIXTURES / "demo-report.json").read_bytes()


def test_make_run_prints_the_recorded_table(any_broker: str, tmp_path: Path) -> None:
    stdout = _cli(
        tmp_path, "demo", "--applications", "300", "--seed", "7", "--broker-url", any_broker
    )
    table = stdout.decode().splitlines(keepends=True)[:-2]  # file paths, wall time
    assert "".join(table) == (FIXTURES / "demo-table-seed7.txt").read_text(encoding="utf-8")
