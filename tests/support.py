"""Helpers every test that runs real processes shares: a private Redis, a Celery worker.

The shared Redis on 127.0.0.1:6379 is never touched: ``private_redis`` (a session
fixture in ``tests/conftest.py``) starts a redis-server of the session's own. A
missing redis-server skips locally and fails under CI (``CI`` set).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from retry_pipeline.adapters.migrate import upgrade
from simulation.redis_server import PrivateRedis, start_private_redis

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 15.0
T = TypeVar("T")


def private_redis_server() -> Iterator[PrivateRedis]:
    """A redis-server private to the caller (the body of the ``private_redis`` fixture)."""
    try:
        server = start_private_redis()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"these tests need a redis-server under CI: {exc}")
        pytest.skip(f"no redis-server to start ({exc})")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Worker:
    """A celery worker subprocess and what it was started with."""

    process: subprocess.Popen[bytes]
    queue: str
    db_url: str
    broker_url: str
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for(
    probe: Callable[[], T | None], timeout_s: float, what: str, worker: Worker | None = None
) -> T:
    """Poll ``probe`` until it is truthy; at the deadline, fail with the worker's log."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if worker is not None and not worker.alive():
            pytest.fail(
                f"worker exited (code {worker.process.returncode}) while waiting for {what}\n"
                f"{worker.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = worker.log_tail() if worker else ""
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tail}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (warm shutdown), then SIGKILL after a bound."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def launch_worker(broker_url: str, workdir: Path) -> Worker:
    """Start ``celery worker`` (solo pool, a unique queue) over a fresh migrated SQLite file."""
    from tests.conftest import create_registry_standin_at

    db_url = f"sqlite:///{workdir / 'retry.sqlite3'}"
    upgrade(db_url)
    create_registry_standin_at(db_url)  # Kei-MOTAS is external: the tests stand in for it
    queue = f"rp-dl-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    env.update(
        RETRY_PIPELINE_DATABASE_URL=db_url,
        RETRY_PIPELINE_BROKER_URL=broker_url,
        RETRY_PIPELINE_QUEUE=queue,
        RETRY_PIPELINE_EXAMINATION_QUEUE=f"{queue}-examination",
        PYTHONPATH=str(ROOT),
    )
    log = workdir / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "retry_pipeline.tasks",
                "worker",
                "-Q",
                queue,
                "-c",
                "1",
                "-P",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{queue}@%h",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = Worker(process, queue, db_url, broker_url, log)
    try:
        wait_for(lambda: " ready." in log.read_text(errors="replace"), READY_TIMEOUT_S,
                 "the worker to be ready", started)  # fmt: skip
    except BaseException:
        stop_process(process)
        raise
    return started
