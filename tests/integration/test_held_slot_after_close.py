"""A slot whose row another transaction holds, after the day's last grid tick (PostgreSQL).

The fault matrix's `all at once` (seed 2) had one attempt 100 slots late: a report
detected at 15:41, right after the worker was killed, reached the restarted worker after
the 16:00 close tick; its chain was due at 15:50 and the slot's message came at once,
but the slot's batch skips rows another transaction holds (``SKIP LOCKED``; there the
duplicate of the report, re-sent by the examination side, locking the chain's row) and
counted on "the next grid tick" to send the slot again. After the close that tick is
08:30 the next business day: the 15:50 attempt ran then, 1,000 minutes late.

Here a real worker (clock file at 16:05, after the close tick) gets the 15:50 slot while
an outside session holds the chain's row (``SELECT ... FOR UPDATE``) for more tries than
a Celery task's default ``max_retries``: the slot waits with a back-off and decides the
chain once the lock goes, with no tick and no dead letter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.bootstrap import bootstrap
from retry_pipeline.clock import FileClock, FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.model import Application, CertificateKind, Procedure, Report
from simulation.redis_server import PrivateRedis
from tests.conftest import create_registry_standin_at
from tests.integration.test_registry_external import Sent
from tests.support import (
    pipeline_env,
    private_redis_server,
    start_celery_worker,
    stop_process,
    wait_for,
)

TOKYO = ZoneInfo("Asia/Tokyo")
DETECTED = datetime(2026, 5, 7, 15, 41, tzinfo=TOKYO)  # a Thursday; the close is 16:00
SLOT = datetime(2026, 5, 7, 15, 50, tzinfo=TOKYO)
AFTER_CLOSE = datetime(2026, 5, 7, 16, 5, tzinfo=TOKYO)  # the 16:00 tick has run
STORED_SLOT = SLOT.astimezone(UTC).replace(tzinfo=None)  # as the columns hold it (UTC)
DEADLINE_S = 45.0
SCALE = 10.0  # pipeline seconds a real second: the back-off's 2, 4, 8 ... s pass quickly
WAITS = 6  # tries the held slot makes before the lock goes: more than Celery's default 3

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    yield from private_redis_server()  # a server of this module's own (tests/support.py)


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    admin.dispose()
    upgrade(postgres_server_url)
    create_registry_standin_at(postgres_server_url)  # Kei-MOTAS is external: stand in
    return postgres_server_url


def query(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def slot_ran(log: str) -> bool:
    """The worker took the slot's message: it waits for the row, or it returned."""
    return "held by another transaction" in log or ("attempt_slot[" in log and "succeeded" in log)


def test_a_held_slot_after_the_close_is_decided_once_the_lock_goes_not_next_morning(
    private_redis: PrivateRedis, pg_url: str, tmp_path: Path
) -> None:
    application = f"OSS-2026-H{uuid.uuid4().hex[:5]}"
    subject = Application(application, "KEI-OSAKA", Procedure.CONTINUOUS, "JA11-H00001")
    sent = Sent()
    intake = bootstrap(
        Settings(database_url=pg_url), None,
        clock=FixedClock(AFTER_CLOSE), dispatcher=sent, gateway=sent,
    )  # fmt: skip
    missing = frozenset({CertificateKind.SAFETY})
    intake.accept_report(Report(subject, missing, frozenset(), DETECTED), sent_at=DETECTED)
    intake.store.engine.dispose()
    assert query(pg_url, "SELECT next_slot FROM retry_chain") == [(STORED_SLOT,)]
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, AFTER_CLOSE, SCALE)
    queue = f"held-{uuid.uuid4().hex[:8]}"
    env = pipeline_env(
        database_url=pg_url,
        broker_url=private_redis.url,
        queue=queue,
        examination_queue=f"{queue}-examination",
        clock_file=str(clock_file),
    )
    worker = start_celery_worker(queue, f"{queue}@%h", env, tmp_path / "worker.log", cwd=tmp_path)
    app = Celery("sender", broker=private_redis.url, set_as_current=False)
    holder_engine = create_engine(pg_url)
    holder = holder_engine.connect()
    try:
        wait_for(worker.ready, DEADLINE_S, "ready", worker)
        # An outside session holds the chain's row, as a duplicate report's intake does.
        holder.execute(text("BEGIN"))
        holder.execute(text("SELECT 1 FROM retry_chain FOR UPDATE"))
        app.send_task("retry_pipeline.attempt_slot", args=[SLOT.isoformat()], queue=queue)
        wait_for(lambda: slot_ran(worker.output()), DEADLINE_S, "the slot's message", worker)
        # The lock stays for many tries: a task's default max_retries (3) must not end
        # them in MaxRetriesExceededError and a dead letter (the fault matrix saw that).
        wait_for(lambda: worker.output().count(" waits ") >= WAITS, DEADLINE_S, "tries", worker)
        assert "MaxRetriesExceeded" not in worker.output()
        assert query(pg_url, "SELECT attempts_made FROM retry_chain") == [(0,)]
        holder.rollback()  # the lock goes; no grid tick comes before 08:30 tomorrow
        wait_for(
            lambda: query(pg_url, "SELECT slot FROM retry_history WHERE attempt_no = 1"),
            DEADLINE_S,
            "the 15:50 attempt",
            worker,
        )
        recorded = query(pg_url, "SELECT slot, recorded_at FROM retry_history WHERE attempt_no = 1")
        assert [r[0] for r in recorded] == [STORED_SLOT]
        # this evening, not at 08:30 next morning
        assert recorded[0][1] - STORED_SLOT < timedelta(minutes=20)
    finally:
        holder.close()
        holder_engine.dispose()
        app.close()
        stop_process(worker)
