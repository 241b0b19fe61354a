"""Kei-MOTAS unreachable under a real worker (issue 13): the slot waits and retries in the slot.

PostgreSQL twice: the pipeline's database, and Kei-MOTAS on a second database reached
through a TCP proxy the test cuts. A chain is due at 08:40 (the worker's clock is a
clock file at 08:40:20). While the proxy is down the worker's ``attempt_slot`` decides
nothing and tries again with a back-off; once the proxy is back, the same slot
resumes the chain. No attempt is counted on a failed read, no dead letter is left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.bootstrap import bootstrap
from retry_pipeline.clock import FileClock, FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.model import Application, CertificateKind, Procedure, Report, SafetyCertificate
from simulation.redis_server import PrivateRedis
from tests.conftest import create_registry_standin_at
from tests.integration.test_faults_inprocess import TcpProxy
from tests.integration.test_registry_external import Sent, insert_certificate
from tests.support import (
    pipeline_env,
    private_redis_server,
    start_celery_worker,
    stop_process,
    wait_for,
)

TOKYO = ZoneInfo("Asia/Tokyo")
DETECTED = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
SLOT = datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
DEADLINE_S = 60.0

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    yield from private_redis_server()  # a server of this module's own (tests/support.py)


@pytest.fixture
def databases(postgres_server_url: str) -> Iterator[tuple[str, str]]:
    """(pipeline database, Kei-MOTAS database): both fresh."""
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    name = f"rp_kmt_outage_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    keimotas = make_url(postgres_server_url).set(database=name)
    upgrade(postgres_server_url)
    create_registry_standin_at(keimotas.render_as_string(hide_password=False))
    try:
        yield postgres_server_url, keimotas.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def query(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def test_slot_waits_while_keimotas_is_down_and_decides_once_it_is_back(
    private_redis: PrivateRedis, databases: tuple[str, str], tmp_path: Path
) -> None:
    pipeline_url, keimotas_url = databases
    target = make_url(keimotas_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    proxy.start()
    proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # The chain: continuous, safety missing, due at 08:40; the certificate came at 08:38.
    vehicle = f"JA11-{uuid.uuid4().hex[:6]}"
    insert_certificate(
        keimotas_url,
        SafetyCertificate(
            id=f"S-{uuid.uuid4().hex[:8]}", vehicle=vehicle, inspected_on=date(2026, 11, 20),
            insurer_id="INS-1", insurance_no="NO-1", available_at=SLOT - timedelta(minutes=2),
        ),
    )  # fmt: skip
    application = f"OSS-2026-K{uuid.uuid4().hex[:5]}"
    subject = Application(application, "KEI-OSAKA", Procedure.CONTINUOUS, vehicle)
    sent = Sent()
    intake = bootstrap(
        Settings(database_url=pipeline_url, registry_url=keimotas_url), None,
        clock=FixedClock(DETECTED + timedelta(seconds=5)), dispatcher=sent, gateway=sent,
    )  # fmt: skip
    kinds = frozenset({CertificateKind.SAFETY})
    intake.accept_report(Report(subject, kinds, frozenset({CertificateKind.INSURANCE}), DETECTED))
    intake.store.engine.dispose()
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, SLOT + timedelta(seconds=20), 1.0)
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    env = pipeline_env(
        database_url=pipeline_url,
        registry_url=proxied,
        broker_url=private_redis.url,
        queue=queue,
        examination_queue=f"{queue}-examination",
        clock_file=str(clock_file),
    )
    worker = start_celery_worker(queue, f"{queue}@%h", env, tmp_path / "worker.log", cwd=tmp_path)
    app = Celery("sender", broker=private_redis.url, set_as_current=False)
    try:
        wait_for(worker.ready, DEADLINE_S, "ready", worker)
        proxy.stop()  # Kei-MOTAS unreachable
        app.send_task("retry_pipeline.attempt_slot", args=[SLOT.isoformat()], queue=queue)
        wait_for(
            lambda: worker.output().count("waits") >= 2, DEADLINE_S, "two waits in the slot", worker
        )
        chain = query(pipeline_url, "SELECT attempts_made FROM retry_chain")
        assert chain == [(0,)]  # nothing decided, nothing counted on a failed read
        assert query(pipeline_url, "SELECT count(*) FROM outbox") == [(0,)]
        proxy.start()  # back
        wait_for(
            lambda: query(pipeline_url, "SELECT outcome FROM outbox"),
            DEADLINE_S,
            "an outcome",
            worker,
        )
        assert query(pipeline_url, "SELECT outcome, application FROM outbox") == [
            ("resumed", application)
        ]
        assert query(pipeline_url, "SELECT count(*) FROM retry_chain") == [(0,)]
        assert query(pipeline_url, "SELECT count(*) FROM dead_letter") == [(0,)]
        slots = query(pipeline_url, "SELECT slot FROM retry_history WHERE attempt_no = 1")
        assert len(slots) == 1  # attempt 1, once, at 08:40
    finally:
        app.close()
        proxy.stop()
        stop_process(worker)
