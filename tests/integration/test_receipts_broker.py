"""Reports lost in the broker (issue 12, finding 1), on PostgreSQL with a real worker.

250 reports are queued while the worker is stopped, the private Redis is flushed,
and the worker starts: the broker forgot every report. The durable sender
(``retry_pipeline.client.DurableSender``) re-sends those without a receipt; the
stand-in examination side (``simulation.examination``, a real Celery worker) hands
each ``examination.report_received`` to the sender. Every report reaches SQL exactly
once: one chain and one ``reported`` line per application. Without the re-send the
test fails: the flushed queue is empty, and no receipt ever comes.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import ChainRow, HistoryRow, ReceiptRow
from retry_pipeline.client import DurableSender
from simulation.examination import SENDER_URL
from simulation.redis_server import PrivateRedis, start_private_redis

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))
REPORTS = 250
READY_TIMEOUT_S = 60.0
RECEIPTS_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
T = TypeVar("T")


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test alone: flushing it touches nobody else."""
    try:
        server = start_private_redis()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"this test needs a redis-server under CI: {exc}")
        pytest.skip(f"no redis-server to start ({exc})")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    engine = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(postgres_server_url)
    return postgres_server_url


@dataclass
class Processes:
    """The pipeline's worker and the examination side's, started and stopped by name."""

    env: dict[str, str]
    workdir: Path
    queue: str
    running: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str) -> None:
        app = "retry_pipeline.tasks" if name == "worker" else "simulation.examination"
        queue = self.queue if name == "worker" else f"{self.queue}-examination"
        log = self.workdir / f"{name}.log"

        def readies() -> int:
            return log.read_text(errors="replace").count(" ready.") if log.exists() else 0

        before = readies()
        with log.open("ab") as out:
            self.running[name] = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue,
                    "-P", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO",
                ],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: readies() > before, READY_TIMEOUT_S, f"{name} to be ready", self)

    def stop(self, name: str) -> None:
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def tails(self) -> str:
        out = []
        for name in ("worker", "examination"):
            log = self.workdir / f"{name}.log"
            text_ = log.read_text(errors="replace") if log.exists() else ""
            out.append(f"--- {name}\n" + "\n".join(text_.splitlines()[-40:]))
        return "\n".join(out)


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str, p: Processes) -> T:
    """Poll ``probe`` until truthy; at the deadline, fail with the processes' logs."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        for name, process in p.running.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited while waiting for {what}\n{p.tails()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{p.tails()}")
        time.sleep(0.1)


@pytest.fixture
def processes(private_redis: PrivateRedis, pg_url: str, tmp_path: Path) -> Iterator[Processes]:
    queue = f"rp-rc-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    env.update(
        {
            "RETRY_PIPELINE_DATABASE_URL": pg_url,
            "RETRY_PIPELINE_BROKER_URL": private_redis.url,
            "RETRY_PIPELINE_QUEUE": queue,
            "RETRY_PIPELINE_EXAMINATION_QUEUE": f"{queue}-examination",
            SENDER_URL: f"sqlite:///{tmp_path / 'sender.sqlite3'}",
            "PYTHONPATH": str(ROOT),
        }
    )
    p = Processes(env, tmp_path, queue, {})
    try:
        yield p
    finally:
        for name in list(p.running):
            p.stop(name)


def reports(mark: str) -> list[dict[str, Any]]:
    detected = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return [
        {
            "application": f"{mark}-{i:04d}", "office": "OSK01", "procedure": "continuous",
            "vehicle": f"JA11-{i:06d}", "missing": ["safety"], "confirmed": [],
            "detected_at": detected,
        }
        for i in range(REPORTS)
    ]  # fmt: skip


def test_reports_flushed_from_the_broker_reach_sql_exactly_once(
    processes: Processes, private_redis: PrivateRedis, pg_url: str, tmp_path: Path
) -> None:
    mark = f"RC{uuid.uuid4().hex[:8]}"
    sender = DurableSender(
        processes.env[SENDER_URL],
        broker_url=private_redis.url,
        queue=processes.queue,
        resend_after=timedelta(seconds=3),
    )
    processes.start("examination")
    broker = redis.Redis.from_url(private_redis.url)
    try:
        sent = reports(mark)
        sender.send_many(sent)  # the pipeline's worker is stopped: they queue
        assert broker.llen(processes.queue) > 0
        broker.flushall()  # the private Redis forgets them (as a restart without persistence)
        assert broker.llen(processes.queue) == 0
    finally:
        broker.close()
    processes.start("worker")

    def all_receipted() -> bool:
        sender.resend_due()  # what the examination side runs periodically
        return sender.counts().unreceipted == 0

    wait_for(all_receipted, RECEIPTS_TIMEOUT_S, f"receipts of {REPORTS} reports", processes)

    engine = create_engine(pg_url)
    try:
        with Session(engine) as s:
            like = f"{mark}-%"
            chains = s.scalar(
                select(func.count()).select_from(ChainRow).where(ChainRow.application.like(like))
            )
            reported = dict(
                s.execute(
                    select(HistoryRow.application, func.count())
                    .where(HistoryRow.application.like(like), HistoryRow.event == "reported")
                    .group_by(HistoryRow.application)
                ).all()
            )
            chain_ids = s.scalar(
                select(func.count(func.distinct(HistoryRow.chain_id))).where(
                    HistoryRow.application.like(like)
                )
            )
        assert chains == REPORTS
        assert len(reported) == REPORTS and set(reported.values()) == {1}
        assert chain_ids == REPORTS
        assert sender.counts().resends >= REPORTS  # every one of them went again
        assert {status for status, _c in sender.receipts().values()} == {"accepted"}

        # A report re-sent after its receipt: a duplicate receipt, no second chain.
        # (Re-sends while the worker caught up may have given duplicates already.)
        again = sent[7]

        def receipt_statuses() -> list[str]:
            with Session(engine) as s:
                return list(
                    s.scalars(
                        select(ReceiptRow.status)
                        .where(ReceiptRow.application == again["application"])
                        .order_by(ReceiptRow.id)
                    )
                )

        before = len(receipt_statuses())
        sender.send(again)
        statuses = wait_for(
            lambda: (got := receipt_statuses()) and len(got) > before and got,
            60, "the duplicate receipt", processes,
        )  # fmt: skip
        assert statuses[0] == "accepted"
        assert set(statuses[1:]) == {"duplicate"}
        with Session(engine) as s:
            assert (
                s.scalar(
                    select(func.count())
                    .select_from(ChainRow)
                    .where(ChainRow.application == again["application"])
                )
                == 1
            )
    finally:
        engine.dispose()
