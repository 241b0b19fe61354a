"""Shared fixtures: settings, calendar, and real databases (SQLite file, PostgreSQL).

PostgreSQL: ``TEST_POSTGRES_URL`` (default: the local server, database ``test``).
Each test session creates its own database and drops it at the end. When no
PostgreSQL answers, its tests skip locally and fail under CI (``CI`` set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import create_registry_standin
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.config import Settings
from retry_pipeline.redact import mask_url
from simulation.redis_server import PrivateRedis
from tests.support import private_redis_server

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
IN_CI = bool(os.environ.get("CI"))


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def calendar(settings: Settings) -> BusinessCalendar:
    return BusinessCalendar(settings)


def _missing_service(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI but does not answer")
    pytest.skip(f"{what} does not answer (tests skip outside CI)")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin_url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_PG)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any connection failure means "no server"
        admin.dispose()
        _missing_service(f"PostgreSQL at {admin_url} ({type(exc).__name__})")
    name = f"rp_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'retry.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_server_url")
        _reset_postgres(url)
    upgrade(url)
    create_registry_standin_at(url)  # Kei-MOTAS is external: the tests stand in for it
    return url


def create_registry_standin_at(url: str) -> None:
    """The Kei-MOTAS tables at ``url`` (docs/registry.md), as the simulation creates them."""
    engine = create_engine(url)
    try:
        create_registry_standin(engine)
    finally:
        engine.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[RetryStore]:
    s = RetryStore.from_url(db_url)
    yield s
    s.engine.dispose()


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server private to this test session; the shared one is never touched."""
    yield from private_redis_server()


RABBITMQ_ADMIN = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host private to this test session (``rabbitmqctl``), deleted after.

    Without rabbitmqctl, the server's default virtual host with this session's own
    queue names. Skips locally (fails under CI) when no RabbitMQ answers.
    """
    import shutil
    import subprocess
    import uuid

    from kombu import Connection

    try:
        with Connection(RABBITMQ_ADMIN, connect_timeout=2) as conn:
            conn.connect()
    except Exception as exc:  # any connection failure means "no server"
        _missing_service(f"RabbitMQ at {mask_url(RABBITMQ_ADMIN)} ({type(exc).__name__})")
    ctl = shutil.which("rabbitmqctl")
    vhost = f"rp_test_{uuid.uuid4().hex[:10]}"
    made = False
    if ctl is not None:
        made = (
            subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60).returncode
            == 0
        )
        if made:
            subprocess.run(
                [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True, timeout=60, check=True,
            )  # fmt: skip
    try:
        yield RABBITMQ_ADMIN.rstrip("/") + "/" + vhost if made else RABBITMQ_ADMIN
    finally:
        if made and ctl is not None:
            subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)
