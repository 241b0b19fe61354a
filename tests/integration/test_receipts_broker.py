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
from simulation.redis_server import PrivateRedis
from tests.support import (
    ROOT,
    Started,
    pipeline_env,
    private_redis_server,
    start_celery_worker,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(600)]

REPORTS = 250
READY_TIMEOUT_S = 60.0
RECEIPTS_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
T = TypeVar("T")


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test alone: flushing it touches nobody else."""
    yield from private_redis_server()


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
    running: dict[str, Started]

    def start(self, name: str) -> None:
        """Start ``name`` (``worker`` or ``examination``), its log appended to; wait until ready."""
        app = "retry_pipeline.tasks" if name == "worker" else "simulation.examination"
        queue = self.queue if name == "worker" else f"{self.queue}-examination"
        self.running[name] = start_celery_worker(
            queue,
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            self.env,
            self.workdir / f"{name}.log",
            app=app,
            cwd=ROOT,
            append=True,
            heartbeat=False,
        )
        self.wait_for(self.running[name].ready, READY_TIMEOUT_S, f"{name} to be ready")

    def stop(self, name: str) -> None:
        started = self.running.pop(name, None)
        if started is not None:
            stop_process(started, STOP_TIMEOUT_S)

    def wait_for(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """``tests.support.wait_for``, watching every running process."""
        return wait_for(probe, timeout_s, what, *self.running.values())


@pytest.fixture
def processes(private_redis: PrivateRedis, pg_url: str, tmp_path: Path) -> Iterator[Processes]:
    queue = f"rp-rc-{uuid.uuid4().hex[:10]}"
    env = pipeline_env(
        database_url=pg_url,
        broker_url=private_redis.url,
        queue=queue,
        examination_queue=f"{queue}-examination",
    )
    env[SENDER_URL] = f"sqlite:///{tmp_path / 'sender.sqlite3'}"
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

    processes.wait_for(all_receipted, RECEIPTS_TIMEOUT_S, f"receipts of {REPORTS} reports")

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
        statuses = processes.wait_for(
            lambda: (got := receipt_statuses()) and len(got) > before and got,
            60, "the duplicate receipt",
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
