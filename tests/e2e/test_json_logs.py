"""``RETRY_PIPELINE_LOG_FORMAT=json``: a real worker and a real beat log JSON lines.

The worker refuses a bad report (a dead letter): that line carries the report's
``application``. Every line either process writes is one JSON object, but for the
shutdown notice Celery's signal handler prints directly when the worker is stopped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.client import report_missing

pytestmark = pytest.mark.e2e
DEADLINE_S = 90.0


# Celery's signal handler writes this straight to stdout (not through logging) on a stop.
SHUTDOWN_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")


def _records(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    lines = [line for line in lines if not SHUTDOWN_NOTICE.match(line)]
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "retry_pipeline.tasks", "--quiet", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _wait_for(path: Path, found: Any, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        complete = text[: text.rfind("\n") + 1]
        records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        if any(found(r) for r in records):
            return records
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no matching log line in time:\n{path.read_text()[-3000:]}")


def test_worker_and_beat_log_json_lines(tmp_path: Path, broker_url: str) -> None:
    db_url = f"sqlite:///{tmp_path / 'logs.sqlite3'}"
    upgrade(db_url)
    queue = f"rp-logs-{os.getpid()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")},
        "RETRY_PIPELINE_DATABASE_URL": db_url,
        "RETRY_PIPELINE_BROKER_URL": broker_url,
        "RETRY_PIPELINE_QUEUE": queue,
        "RETRY_PIPELINE_LOG_FORMAT": "json",
    }
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    worker = _start(
        ["worker", "-Q", queue, "-c", "1", "-P", "solo", "--without-gossip", "--without-mingle",
         "--loglevel", "INFO", "-n", f"logs-{os.getpid()}@%h"],
        env, worker_log, tmp_path,
    )  # fmt: skip
    beat = _start(
        ["beat", "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
        env, beat_log, tmp_path,
    )  # fmt: skip
    try:
        bad = {"application": "LOG-APP-1", "office": "KEI-OSAKA", "procedure": "continuous"}
        report_missing(bad, broker_url=broker_url, queue=queue)
        records = _wait_for(
            worker_log,
            lambda r: r.get("application") == "LOG-APP-1" and "dead letter" in r["message"],
            worker,
        )
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        _wait_for(beat_log, lambda r: "beat" in r["message"].lower(), beat)
    finally:
        _stop(worker)
        _stop(beat)
    _records(worker_log)
    _records(beat_log)
