"""Issue 11: one-report messages taken in micro-batches by a real prefork worker, on
PostgreSQL, over Redis and RabbitMQ (``retry_pipeline/report_buffer.py``).

Each report is still judged on its own: a late one (R4a) is planned from its arrival, a
repeated one is a duplicate, a conflicting one (R4), a malformed one and a message with
two reports are refused with one dead letter each; every message gets one
task-succeeded or task-failed event; and at least one batch held more than one report.
A worker SIGKILLed while reports stream in doubles none, and loses none: its
unacknowledged messages come back and the next worker takes them (on RabbitMQ, all of
them; on Redis, all but the few a BRPOP had taken off the list and the worker had not yet
recorded, which the sender re-sends for want of a receipt, as ``DurableSender`` does).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, func, select

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow, ReceiptRow
from retry_pipeline.calendar import parse_instant
from retry_pipeline.client import SENT_AT_HEADER
from retry_pipeline.clock import FileClock
from retry_pipeline.config import PREFIX
from tests.support import Started, pipeline_env, start_celery_worker, stop_processes, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(600)]

NOW = parse_instant("2026-11-27T09:05:00+09:00")  # a Friday, a business day
# Reports detected at 15:28 are due at 15:30, the clock's slot: intake sends no slot
# message with an ETA, which a 10 s visibility timeout would copy again every 10 s.
PARKING = parse_instant("2026-11-27T15:30:00+09:00")
REPORT = "retry_pipeline.report_missing"
DEADLINE_S = 120
STOP_S = 30.0


class Workers:
    """Start and kill real prefork workers on one queue, on a clock standing at ``NOW``."""

    def __init__(self, pg_url: str, broker_url: str, workdir: Path, **extra: str) -> None:
        self.clock = workdir / "clock.json"
        FileClock.write(self.clock, NOW, 1.0)
        self.queue = f"batches-{uuid.uuid4().hex[:8]}"
        self.env = pipeline_env(
            database_url=pg_url,
            broker_url=broker_url,
            clock_file=str(self.clock),
            queue=self.queue,
            examination_queue=f"{self.queue}-examination",
        )
        self.env.update({PREFIX + k: v for k, v in extra.items()})
        self.workdir = workdir
        self.procs: list[Started] = []

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        started = start_celery_worker(
            self.queue, f"b{n}-{self.queue}@test", self.env, self.workdir / f"worker{n}.log",
            pool="prefork", concurrency=2,
        )  # fmt: skip
        self.procs.append(started)
        return started.process

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.workdir.glob("worker*.log"))

    def stop(self) -> None:
        stop_processes(self.procs, STOP_S)


def client_for(broker_url: str) -> Celery:
    app = Celery("batches-client", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


def report(app: str, now: datetime = NOW, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "application": app, "office": "OSK01", "procedure": "continuous",
        "vehicle": f"V-{app}", "missing": ["safety"], "confirmed": [],
        "detected_at": (now - timedelta(minutes=2)).isoformat(),
    }  # fmt: skip
    body.update(changes)
    return body


def send(client: Celery, queue: str, *args: Any, **kwargs: Any) -> str:
    sent_at = kwargs.pop("_sent_at", None)
    headers = {SENT_AT_HEADER: sent_at} if sent_at else None
    result = client.send_task(REPORT, args=args, kwargs=kwargs, queue=queue, headers=headers)
    return str(result.id)


def wait_until(check: Callable[[], bool], what: str, within_s: float = DEADLINE_S) -> None:
    wait_for(check, within_s, what, interval_s=0.2)


def count(engine: Engine, row: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(row).where(*where)) or 0)


class Events:
    """Task events of the run, by task id (Flower reads the same stream)."""

    def __init__(self, client: Celery) -> None:
        self.by_task: dict[str, list[dict[str, Any]]] = {}
        self.client = client
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.receiver is not None, "the event receiver")

    def _run(self) -> None:
        with self.client.connection_for_read() as conn:
            self.receiver = self.client.events.Receiver(conn, handlers={"*": self._on})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on(self, event: dict[str, Any]) -> None:
        if "uuid" in event:
            self.by_task.setdefault(event["uuid"], []).append(event)

    def close(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)


@pytest.fixture
def workers(pg_url: str, any_broker: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(pg_url, any_broker, tmp_path, VISIBILITY_TIMEOUT_S="10")
    yield w
    w.stop()


def test_each_batched_report_keeps_its_own_rules(
    pg_url: str, any_broker: str, workers: Workers
) -> None:
    engine = make_engine(pg_url)
    client = client_for(any_broker)
    events = Events(client)
    q = workers.queue
    good = [send(client, q, report(f"BATCH-{i:04d}")) for i in range(300)]
    late = send(client, q, report("BATCH-LATE", detected_at="2026-11-27T08:36:00+09:00"),
                _sent_at=NOW.isoformat())  # fmt: skip
    twice = send(client, q, report("BATCH-0000"))  # the same report again: a duplicate
    conflict = send(client, q, report("BATCH-0001", office="KOB02"))  # R4
    bad = send(client, q, report("BATCH-BAD", vehicle=""))
    two = send(client, q, report("BATCH-TWO-A"), report("BATCH-TWO-B"))
    workers.start()  # after the sends: the queue is full when the worker comes up
    refused = {conflict, bad, two}
    every = {*good, late, twice, *refused}

    def settled() -> bool:
        return all(
            any(e["type"] in ("task-succeeded", "task-failed") for e in events.by_task.get(t, []))
            for t in every
        )

    wait_until(settled, "one outcome event per report message")
    time.sleep(1.0)  # any second event would arrive by now
    events.close()
    assert count(engine, ChainRow) == 301  # 300 + the late one; no other chain
    assert count(engine, DeadLetterRow) == 3
    with engine.connect() as conn:
        reasons = list(conn.scalars(select(DeadLetterRow.reason)))
        late_s = conn.scalar(
            select(HistoryRow.late_s).where(
                HistoryRow.application == "BATCH-LATE", HistoryRow.event == "reported"
            )
        )
        statuses = Counter(conn.scalars(select(ReceiptRow.status)))
    assert any("conflicting report (R4)" in r for r in reasons), reasons
    assert any("one report per message" in r for r in reasons), reasons
    assert late_s == 29 * 60  # R4a: detected 08:36, sent 09:05: planned from its arrival
    assert statuses["accepted"] == 301 and statuses["duplicate"] == 1, statuses
    assert statuses["refused"] >= 2, statuses  # the refused reports that name an application
    for task_id in every:
        done = [
            e for e in events.by_task[task_id] if e["type"] in ("task-succeeded", "task-failed")
        ]
        assert len(done) == 1, (task_id, done)
        assert done[0]["name"] == REPORT
        expected = "task-failed" if task_id in refused else "task-succeeded"
        assert done[0]["type"] == expected, done[0]
        if task_id in refused:
            assert "dead letter #" in done[0]["exception"], done[0]
    sizes = [int(n) for n in re.findall(r"took (\d+) reports in one batch", workers.log())]
    assert sizes and max(sizes) > 1, sizes


def reported_apps(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        stmt = select(HistoryRow.application).where(HistoryRow.event == "reported")
        return Counter(conn.scalars(stmt))


def wait_until_quiet(engine: Engine, n: int) -> None:
    """Until every report started its chain, or nothing new came for 25 s (the visibility
    timeout and its sweep are 10 s and 1 s)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        seen = sum(reported_apps(engine).values())
        if seen >= n:
            return
        if seen != last:
            last, since = seen, time.monotonic()
        elif time.monotonic() - since > 25:
            return
        time.sleep(0.5)


def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    pg_url: str, any_broker: str, workers: Workers
) -> None:
    engine = make_engine(pg_url)
    client = client_for(any_broker)
    n = 2000
    apps = [f"KILL-{i:05d}" for i in range(n)]
    FileClock.write(workers.clock, PARKING, 1.0)
    first = workers.start()
    sender = threading.Thread(
        target=lambda: [send(client, workers.queue, report(a, PARKING)) for a in apps],
        daemon=True,
    )
    sender.start()
    wait_until(lambda: count(engine, ChainRow) >= 200, "the first reports taken")
    os.killpg(first.pid, signal.SIGKILL)  # buffered and in-flight batches die with it
    first.wait()
    assert sum(reported_apps(engine).values()) < n, "the worker took everything first"
    sender.join(timeout=DEADLINE_S)
    workers.start()
    wait_until_quiet(engine, n)
    missing = sorted(set(apps) - set(reported_apps(engine)))
    if any_broker.startswith("redis"):
        # Redis takes a message off its list (BRPOP) before the worker records it as
        # unacknowledged: a SIGKILL in between loses the few in that window. The sender
        # re-sends what has no receipt (DESIGN 11, client.DurableSender): so does this test.
        assert len(missing) <= 10, f"{len(missing)} reports lost, more than BRPOP's window"
        with engine.connect() as conn:
            answered = set(conn.scalars(select(ReceiptRow.application)))
        for app in sorted(set(apps) - answered):
            send(client, workers.queue, report(app, PARKING))
        wait_until(lambda: len(reported_apps(engine)) >= n, f"all {n} chains after re-sends")
    else:
        assert missing == []  # RabbitMQ: an unacknowledged message always comes back
    time.sleep(12.0)  # the visibility timeout: any message still out comes back by now
    reported = reported_apps(engine)
    assert set(reported) == set(apps), workers.log()[-3000:]
    assert max(reported.values()) == 1  # a message taken twice is a duplicate, not a chain
    assert count(engine, DeadLetterRow) == 0
