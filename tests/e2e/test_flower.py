"""Issue 3, done when: a worker and Flower started as the README says show the tasks.

Flower runs behind basic auth (as in docker-compose.yml): without credentials it
answers 401; with them its API lists the pipeline's tasks that the worker ran.
"""

from __future__ import annotations

import base64
import json
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
from tests.support import (
    ROOT,
    celery_command,
    pipeline_env,
    start_celery_worker,
    start_process,
    stop_process,
)

pytest.importorskip("flower")
pytestmark = pytest.mark.e2e

AUTH = "ops:" + uuid.uuid4().hex[:12]
FLOWER_STOP_S = 20.0


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
    env = pipeline_env(database_url=database_url, broker_url=broker_url, queue=queue)
    port = free_port()
    worker = start_celery_worker(
        queue, f"{queue}@%h", env, tmp_path / "worker.log", cwd=ROOT, concurrency=1, loglevel=None
    )
    # As in compose: flowerconfig.py (read only), credentials from a file, none on argv.
    auth_file = tmp_path / "flower_basic_auth"
    auth_file.write_text(AUTH + "\n")
    env["RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE"] = str(auth_file)
    web = start_process(
        celery_command("flower", f"--port={port}", "--address=127.0.0.1"),
        env,
        tmp_path / "flower.log",
        cwd=ROOT,
    )
    try:
        yield f"http://127.0.0.1:{port}", queue
    finally:
        stop_process(web, FLOWER_STOP_S)
        stop_process(worker, FLOWER_STOP_S)


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
