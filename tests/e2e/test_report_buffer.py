"""Issue 11: one-report messages accepted in micro-batches by a real worker (PostgreSQL).

The reports are queued before the worker starts, one report per message as the
examination worker sends them; the worker's buffer accepts them in shared
transactions (the reports of one batch share one decision time). Every valid report
starts its chain, every bad one leaves a dead letter, and every message is
acknowledged (after a warm shutdown only the first slot's ETA message is left). On
Redis, then on RabbitMQ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy import func, select

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow
from retry_pipeline.calendar import parse_instant
from retry_pipeline.clock import FileClock
from retry_pipeline.config import PREFIX
from tests.conftest import _reset_postgres

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
NOW = parse_instant("2026-11-27T09:55:00+09:00")
QUEUE = "intake"
REPORTS = 400
DEADLINE_S = 240


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    return postgres_server_url


class Worker:
    """One real worker (prefork, two processes), started on demand."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "retry_pipeline.tasks", "worker", "-Q", QUEUE,
             "-c", "2", "-P", "prefork", "--without-gossip", "--without-mingle",
             "--loglevel", "WARNING", "-n", f"intake-{uuid.uuid4().hex[:6]}@test"],
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Warm shutdown: what it holds unacknowledged goes back to the queue."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def worker(pg_url: str, any_broker: str, tmp_path: Path) -> Iterator[Worker]:
    clock = tmp_path / "clock.json"
    FileClock.write(clock, NOW, 1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({
        f"{PREFIX}DATABASE_URL": pg_url, f"{PREFIX}BROKER_URL": any_broker,
        f"{PREFIX}CLOCK_FILE": str(clock), f"{PREFIX}QUEUE": QUEUE, "PYTHONPATH": str(ROOT),
    })  # fmt: skip
    w = Worker(env, tmp_path / "worker.log")
    yield w
    w.stop()


def test_one_report_messages_are_accepted_in_batches_and_acknowledged(
    pg_url: str, any_broker: str, worker: Worker
) -> None:
    client = Celery("intake-client", broker=any_broker, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    detected = (NOW - timedelta(minutes=1)).isoformat()
    run = uuid.uuid4().hex[:6]
    for i in range(REPORTS):
        body = {"application": f"B{run}-{i}", "office": "B1", "procedure": "continuous",
                "vehicle": f"VB{run}-{i}", "missing": ["safety"], "detected_at": detected,
        }  # fmt: skip
        client.send_task("retry_pipeline.report_missing", args=[body], queue=QUEUE)
    bad = {"application": f"X{run}", "office": "B1", "procedure": "bogus",
           "vehicle": "VX", "missing": ["safety"], "detected_at": detected}  # fmt: skip
    for _ in range(3):
        client.send_task("retry_pipeline.report_missing", args=[bad], queue=QUEUE)
    client.send_task("retry_pipeline.report_missing", args=[bad, bad], queue=QUEUE)
    worker.start()
    engine = make_engine(pg_url)

    def count(stmt: object) -> int:
        with engine.connect() as conn:
            return int(conn.scalar(stmt) or 0)  # type: ignore[call-overload]

    deadline = time.monotonic() + DEADLINE_S
    letters = select(func.count()).select_from(DeadLetterRow)
    while count(select(func.count()).select_from(ChainRow)) < REPORTS or count(letters) < 4:
        assert time.monotonic() < deadline, "reports not all accepted"
        time.sleep(0.1)
    worker.stop()  # every report message must have been acknowledged by now
    left = []
    with client.connection_for_write() as conn:
        queue = Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)(conn.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            left.append(message.headers["task"])
    assert set(left) <= {"retry_pipeline.attempt_slot"}, left  # the first slot (ETA) waits
    with engine.connect() as conn:
        times = conn.scalars(select(HistoryRow.recorded_at)).all()
        letter_tasks = conn.scalars(select(DeadLetterRow.task)).all()
    engine.dispose()
    assert count(select(func.count()).select_from(ChainRow)) == REPORTS
    assert len(times) == REPORTS  # one line per report: none accepted twice
    assert len(set(times)) < REPORTS, "every report had its own transaction"
    assert letter_tasks == ["retry_pipeline.report_missing"] * 4
