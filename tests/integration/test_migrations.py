"""Alembic migrations (DESIGN 1): head equals the ORM; down and up round-trip, both databases."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pendulum
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import alembic_config, downgrade, upgrade
from retry_pipeline.adapters.orm import Base, RegistryBase, create_registry_standin
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    Cursor,
    Event,
    Phase,
    Procedure,
    Report,
    history_line,
)

ROOT = Path(__file__).resolve().parents[2]  # the checkout, where alembic.ini is
TOKYO = ZoneInfo("Asia/Tokyo")
TABLES = set(Base.metadata.tables)  # every table of the pipeline's own schema
KEIMOTAS = {
    "keimotas_safety_certificate",
    "keimotas_insurance_certificate",
    "keimotas_completion_certificate",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, never migrated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    url: str = request.getfixturevalue("postgres_server_url")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def schema_diff(url: str) -> list[Any]:
    """What autogenerate would still change to make the database match the ORM."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


def use_store(url: str) -> None:
    """The migrated schema takes a real report (R4) end to end."""
    store = RetryStore.from_url(url)
    subject = Application("app-migrated", "OFFICE-A", Procedure.CONTINUOUS, "VIN-1")
    detected = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
    slot = pendulum.datetime(2026, 11, 27, 8, 40, tz="Asia/Tokyo")
    try:
        report = Report(subject, frozenset({CertificateKind.SAFETY}), frozenset(), detected)
        chain = Chain.from_report("c-migrated", report, Cursor(Phase.SAME_DAY, 0, slot))
        line = history_line(
            chain.chain_id, subject, Event.REPORTED, None, slot, report.missing, "", detected
        )
        with store.unit() as u:
            u.chains.insert([chain], detected)
            u.history.append([line])
        with store.unit() as u:
            assert u.chains.get(chain.chain_id) == chain
            assert [h.event for h in u.history.lines()] == ["reported"]
    finally:
        store.engine.dispose()


def test_orm_declares_the_retry_tables() -> None:
    """R4/R5/DESIGN 5: retry table, history, outbox, close signals, heartbeats; Kei-MOTAS apart."""
    assert {
        "retry_chain",
        "retry_history",
        "outbox",
        "close_signal",
        "dead_letter",
        "heartbeat",
    } <= TABLES
    assert set(RegistryBase.metadata.tables) == KEIMOTAS
    assert not KEIMOTAS & TABLES


def test_migrations_do_not_create_the_keimotas_tables(fresh_url: str) -> None:
    """Kei-MOTAS is another system (docs/registry.md): only its stand-in creates them."""
    upgrade(fresh_url)
    assert not tables(fresh_url) & KEIMOTAS
    engine = make_engine(fresh_url)
    create_registry_standin(engine)
    engine.dispose()
    assert tables(fresh_url) >= KEIMOTAS
    upgrade(fresh_url)  # a stand-in beside the pipeline's tables changes nothing
    assert current_revision(fresh_url) == head()


def test_empty_database_differs_from_the_orm(fresh_url: str) -> None:
    """The comparison itself can see a difference (guards the test below)."""
    diff = schema_diff(fresh_url)
    added = {d[1].name for d in diff if d[0] == "add_table"}
    assert added == TABLES


def test_comparison_sees_a_dropped_index_and_a_changed_type(fresh_url: str) -> None:
    """A drifted schema shows up in the diff (guards the empty-diff assertions)."""
    upgrade(fresh_url)
    engine = make_engine(fresh_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_retry_chain_office"))
        conn.execute(text("DROP TABLE close_signal"))
        conn.execute(text("CREATE TABLE close_signal (id INTEGER PRIMARY KEY, day TEXT, at TEXT)"))
    engine.dispose()
    kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in schema_diff(fresh_url)}
    assert "add_index" in kinds  # the ORM has the index the database lost
    assert {"modify_type", "add_column"} <= kinds


def test_upgrade_head_matches_orm_metadata(fresh_url: str) -> None:
    upgrade(fresh_url)
    assert current_revision(fresh_url) == head()
    assert tables(fresh_url) == TABLES | {"alembic_version"}
    assert schema_diff(fresh_url) == []


def test_downgrade_to_base_and_upgrade_again(fresh_url: str) -> None:
    upgrade(fresh_url)
    use_store(fresh_url)
    downgrade(fresh_url, "base")
    assert current_revision(fresh_url) is None
    assert tables(fresh_url) - {"alembic_version"} == set()
    upgrade(fresh_url)
    assert current_revision(fresh_url) == head()
    assert schema_diff(fresh_url) == []
    use_store(fresh_url)  # the data went with the downgrade: the report creates again


def test_upgrade_is_idempotent_at_head(fresh_url: str) -> None:
    upgrade(fresh_url)
    upgrade(fresh_url)
    assert current_revision(fresh_url) == head()
    assert schema_diff(fresh_url) == []


def test_alembic_command_line_upgrade_head(tmp_path: Path) -> None:
    """`alembic upgrade head` from the project root, URL from RETRY_PIPELINE_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    env["RETRY_PIPELINE_DATABASE_URL"] = url
    alembic_bin = Path(sys.executable).with_name("alembic")
    cmd = [str(alembic_bin)] if alembic_bin.exists() else [sys.executable, "-m", "alembic"]
    done = subprocess.run(
        [*cmd, "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert current_revision(url) == head()
    assert schema_diff(url) == []
