"""Issue 3, done when: a worker and Flower started as the README says show the tasks.

Flower runs behind basic auth (as in docker-compose.yml): without credentials it
answers 401; with them its API lists the pipeline's tasks that the worker ran.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.client import report_missing
from simulation.redis_server import free_port
from tests.conftest import create_registry_standin_at

pytest.importorskip("flower")
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AUTH = "ops:" + uuid.uuid4().hex[:12]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "retry_pipeline.tasks", *args],
        env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _get(url: str, auth: str | None, method: str = "GET") -> tuple[int, bytes]:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


@pytest.fixture
def flower(broker_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    database_url = f"sqlite:///{tmp_path / 'flower.sqlite3'}"
    upgrade(database_url)
    create_registry_standin_at(database_url)
    queue = f"flower-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    env.update({
        "RETRY_PIPELINE_DATABASE_URL": database_url, "RETRY_PIPELINE_BROKER_URL": broker_url,
        "RETRY_PIPELINE_QUEUE": queue, "PYTHONPATH": str(ROOT),
    })  # fmt: skip
    port = free_port()
    worker = _start(
        [
            "worker",
            "-Q",
            queue,
            "-c",
            "1",
            "-P",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{queue}@%h",
        ],
        env,
        tmp_path / "worker.log",
    )
    # As in compose: flowerconfig.py (read only), credentials from a file, none on argv.
    auth_file = tmp_path / "flower_basic_auth"
    auth_file.write_text(AUTH + "\n")
    env["RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE"] = str(auth_file)
    web = _start(["flower", f"--port={port}", "--address=127.0.0.1"],
                 env, tmp_path / "flower.log")  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", queue
    finally:
        _stop(web)
        _stop(worker)


def test_flower_shows_the_pipeline_tasks_behind_basic_auth(
    flower: tuple[str, str], broker_url: str
) -> None:
    base, queue = flower
    deadline = time.monotonic() + 60
    while _get(f"{base}/healthcheck", AUTH)[0] != 200:
        assert time.monotonic() < deadline, "Flower did not start"
        time.sleep(0.2)
    assert _get(f"{base}/api/tasks", None)[0] == 401  # basic auth is required

    application = f"FLW-{uuid.uuid4().hex[:8]}"
    report_missing(
        {"application": application, "office": "O1", "procedure": "continuous",
         "vehicle": "V-FLW", "missing": ["completion"],  # R1: refused, a dead letter
         "detected_at": "2026-11-27T08:36:00+09:00"},
        broker_url=broker_url, queue=queue,
    )  # fmt: skip
    names: set[str] = set()
    while "retry_pipeline.report_missing" not in names:
        assert time.monotonic() < deadline, f"Flower never showed the report task: {names}"
        time.sleep(0.3)
        status, body = _get(f"{base}/api/tasks", AUTH)
        assert status == 200
        names = {task.get("name") for task in json.loads(body or b"{}").values()}


def test_flower_is_read_only_and_metrics_need_auth(flower: tuple[str, str]) -> None:
    """Issue 13: no task can be applied or revoked through Flower; /metrics needs the login."""
    base, _ = flower
    deadline = time.monotonic() + 60
    while _get(f"{base}/healthcheck", AUTH)[0] != 200:
        assert time.monotonic() < deadline, "Flower did not start"
        time.sleep(0.2)
    assert _get(f"{base}/healthcheck", None)[0] == 401
    assert _get(f"{base}/metrics", None)[0] == 401
    assert _get(f"{base}/metrics", "ops:wrong")[0] == 401
    status, body = _get(f"{base}/metrics", AUTH)
    assert status == 200 and b"flower" in body
    for path in (
        "/api/task/async-apply/retry_pipeline.close",
        "/api/task/apply/retry_pipeline.close",
        "/api/task/send-task/retry_pipeline.close",
        "/api/task/revoke/some-task-id",
        "/api/worker/shutdown/celery@host",
        "/api/worker/pool/restart/celery@host",
    ):
        assert _get(f"{base}{path}", AUTH, "POST")[0] == 403, path
    assert _get(f"{base}/api/workers", AUTH)[0] == 200  # reading still works
