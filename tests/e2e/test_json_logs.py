"""``RETRY_PIPELINE_LOG_FORMAT=json``: a real worker and a real beat log JSON lines.

The worker refuses a bad report (a dead letter): that line carries the report's
``application``. Every line either process writes is one JSON object, but for the
shutdown notice Celery's signal handler prints directly when the worker is stopped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.client import report_missing
from tests.support import (
    Started,
    celery_command,
    celery_worker_args,
    pipeline_env,
    start_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.e2e
DEADLINE_S = 90.0
STOP_S = 30.0


# Celery's signal handler writes this straight to stdout (not through logging) on a stop.
SHUTDOWN_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")


Record = dict[str, Any]


def _records(path: Path) -> list[Record]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    lines = [line for line in lines if not SHUTDOWN_NOTICE.match(line)]
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def _complete_records(started: Started) -> list[Record]:
    """The JSON records of the lines the process has finished writing."""
    text = started.output()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _records_once(started: Started, found: Callable[[Record], bool]) -> list[Record]:
    """The process's records once one of them is ``found`` (fails if the process exits first)."""

    def probe() -> list[Record] | None:
        records = _complete_records(started)
        return records if any(found(r) for r in records) else None

    return wait_for(probe, DEADLINE_S, "a matching log line", started, interval_s=0.2)


def test_worker_and_beat_log_json_lines(tmp_path: Path, any_broker: str) -> None:
    db_url = f"sqlite:///{tmp_path / 'logs.sqlite3'}"
    upgrade(db_url)
    queue = f"rp-logs-{os.getpid()}"
    env = pipeline_env(
        pythonpath=False, database_url=db_url, broker_url=any_broker, queue=queue, log_format="json"
    )
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    worker_args = celery_worker_args(queue, f"logs-{os.getpid()}@%h", concurrency=1)
    worker = start_process(celery_command("--quiet", *worker_args), env, worker_log, cwd=tmp_path)
    beat_args = ["beat", "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"]
    beat = start_process(celery_command("--quiet", *beat_args), env, beat_log, cwd=tmp_path)
    try:
        bad = {"application": "LOG-APP-1", "office": "KEI-OSAKA", "procedure": "continuous"}
        report_missing(bad, broker_url=any_broker, queue=queue)
        records = _records_once(
            worker, lambda r: r.get("application") == "LOG-APP-1" and "dead letter" in r["message"]
        )
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        _records_once(beat, lambda r: "beat" in r["message"].lower())
    finally:
        stop_process(worker, STOP_S)
        stop_process(beat, STOP_S)
    _records(worker_log)
    _records(beat_log)
