"""Kei-MOTAS as an external, read-only source (issue 13): another database, and outages.

The pipeline's database has no Kei-MOTAS tables (its migrations do not create them);
the registry reads ``RETRY_PIPELINE_REGISTRY_URL``. A registry that cannot be read
makes the slot decide nothing: the chains stay due and are decided once it answers.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from retry_pipeline.adapters.db import make_sessions
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.registry import to_row
from retry_pipeline.bootstrap import bootstrap, registry_engine
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.errors import RegistryUnavailable
from retry_pipeline.model import (
    Application,
    CertificateKind,
    InsuranceCertificate,
    PendingOutcome,
    Procedure,
    Report,
    SafetyCertificate,
)
from retry_pipeline.schedules import retry_countdown
from retry_pipeline.service.pipeline import Pipeline
from tests.conftest import create_registry_standin_at

TOKYO = ZoneInfo("Asia/Tokyo")
DETECTED = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
SLOT = datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
KEIMOTAS = {
    "keimotas_safety_certificate",
    "keimotas_insurance_certificate",
    "keimotas_completion_certificate",
}


@dataclass
class Sent:
    slots: list[datetime] = field(default_factory=list)
    outcomes: list[PendingOutcome] = field(default_factory=list)

    def send_slot(self, slot: datetime) -> None:
        self.slots.append(slot)

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        self.outcomes.extend(outcomes)


@pytest.fixture
def second_postgres(postgres_server_url: str) -> Iterator[str]:
    """Another PostgreSQL database on the same server: Kei-MOTAS, with its stand-in tables."""
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    name = f"rp_keimotas_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    create_registry_standin_at(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pipeline_postgres(postgres_server_url: str) -> str:
    """The pipeline's own database, migrated: no Kei-MOTAS tables in it."""
    engine = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(postgres_server_url)
    return postgres_server_url


def service_for(settings: Settings, sent: Sent, at: datetime) -> tuple[Pipeline, FixedClock]:
    clock = FixedClock(at)
    svc = bootstrap(settings, None, clock=clock, dispatcher=sent, gateway=sent)
    return svc, clock


def report_for(vehicle: str) -> Report:
    subject = Application(
        f"app-{uuid.uuid4().hex[:10]}", "KEI-OSAKA", Procedure.CONTINUOUS, vehicle
    )
    # The insurance certificate was found by the pre-review (R3): only safety is awaited.
    confirmed = frozenset({CertificateKind.INSURANCE})
    return Report(subject, frozenset({CertificateKind.SAFETY}), confirmed, DETECTED)


def safety(vehicle: str, available_at: datetime) -> SafetyCertificate:
    return SafetyCertificate(
        id=f"S-{uuid.uuid4().hex[:10]}",
        vehicle=vehicle,
        inspected_on=date(2026, 11, 20),
        insurer_id="INS-1",
        insurance_no=f"NO-{vehicle}",
        available_at=available_at,
    )


def insert_certificate(url: str, cert: SafetyCertificate) -> None:
    """The safety certificate and the insurance certificate it names (R3: every attempt
    checks the confirmed insurance certificate again)."""
    insurance = InsuranceCertificate(
        id=f"I-{cert.id}", insurer_id=cert.insurer_id, insurance_no=cert.insurance_no,
        vehicle=cert.vehicle, available_at=cert.available_at,
    )  # fmt: skip
    engine = create_engine(url)
    try:
        with make_sessions(engine)() as session, session.begin():
            session.add_all([to_row(cert), to_row(insurance)])
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.postgres
def test_certificates_are_read_from_a_second_database(
    pipeline_postgres: str, second_postgres: str
) -> None:
    """The certificate lives only in the Kei-MOTAS database; the attempt finds it there."""
    assert not table_names(pipeline_postgres) & KEIMOTAS
    vehicle = f"VIN-{uuid.uuid4().hex[:8]}"
    insert_certificate(second_postgres, safety(vehicle, SLOT - timedelta(minutes=2)))
    sent = Sent()
    settings = Settings(database_url=pipeline_postgres, registry_url=second_postgres)
    svc, clock = service_for(settings, sent, DETECTED + timedelta(seconds=5))
    rep = report_for(vehicle)
    svc.accept_report(rep)
    clock.current = SLOT + timedelta(seconds=1)
    assert svc.run_slot(SLOT)["resumed"] == 1
    assert [o.application for o in sent.outcomes] == [rep.subject.application]
    assert sent.outcomes[0].outcome.value == "resumed"


@pytest.mark.postgres
def test_without_the_registry_url_the_pipeline_database_is_read_and_has_no_tables(
    pipeline_postgres: str, second_postgres: str
) -> None:
    """Guards the test above: the default (the pipeline's database) cannot answer here."""
    vehicle = f"VIN-{uuid.uuid4().hex[:8]}"
    insert_certificate(second_postgres, safety(vehicle, SLOT - timedelta(minutes=2)))
    sent = Sent()
    svc, clock = service_for(Settings(database_url=pipeline_postgres), sent, DETECTED)
    rep = report_for(vehicle)
    svc.accept_report(rep)
    clock.current = SLOT + timedelta(seconds=1)
    with pytest.raises(RegistryUnavailable):
        svc.run_slot(SLOT)
    assert sent.outcomes == []


def test_an_unreachable_registry_decides_nothing_and_the_slot_decides_later(
    db_url: str, tmp_path: object
) -> None:
    """Registry down at 08:40: no attempt counted, nothing sent; once it answers, 08:40 runs."""
    vehicle = f"VIN-{uuid.uuid4().hex[:8]}"
    down = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/keimotas"
    sent = Sent()
    svc, clock = service_for(
        Settings(database_url=db_url, registry_url=down), sent, DETECTED + timedelta(seconds=5)
    )
    rep = report_for(vehicle)
    svc.accept_report(rep)
    clock.current = SLOT + timedelta(seconds=1)
    with pytest.raises(RegistryUnavailable):
        svc.run_slot(SLOT)
    with pytest.raises(RegistryUnavailable):
        svc.run_slot(SLOT)  # a redelivery finds it unreadable again, and counts nothing
    with svc.store.unit() as u:
        chain = u.chains.of_applications([rep.subject.application], lock=False).get(
            rep.subject.application
        )
    assert chain is not None
    assert chain.attempts_made == 0 and chain.cursor.slot == SLOT  # still due at 08:40
    assert sent.outcomes == []
    # The registry answers again (here: the stand-in in the pipeline's database).
    insert_certificate(db_url, safety(vehicle, SLOT - timedelta(minutes=2)))
    up, _ = service_for(Settings(database_url=db_url), sent, SLOT + timedelta(seconds=30))
    assert up.run_slot(SLOT)["resumed"] == 1
    assert [o.application for o in sent.outcomes] == [rep.subject.application]


def test_registry_engine_is_read_only_on_postgresql() -> None:
    engine = registry_engine("postgresql+psycopg://u@127.0.0.1:1/x")
    assert engine.get_execution_options().get("postgresql_readonly") is True
    engine.dispose()


@pytest.mark.parametrize(
    ("retries", "into_slot_s", "expected"),
    [
        (0, 1, 2.0),
        (1, 1, 4.0),
        (3, 30, 16.0),
        (10, 30, 60.0),  # capped
        (10, 540, None),  # 9 minutes in: the next try would be in the next slot
        (0, 599, None),
    ],
)
def test_unreadable_slot_backs_off_within_its_slot(
    retries: int, into_slot_s: int, expected: float | None
) -> None:
    now = SLOT + timedelta(seconds=into_slot_s)
    assert retry_countdown(SLOT, now, timedelta(minutes=10), retries) == expected


SOURCE_DDL = """
CREATE SCHEMA keimotas;
CREATE TABLE keimotas.safety_certificate (
    id text PRIMARY KEY, vehicle text NOT NULL, inspected_on date NOT NULL,
    insurer_id text NOT NULL, insurance_no text NOT NULL, used_by text,
    deleted_at timestamptz, available_at timestamptz NOT NULL, internal_note text);
CREATE TABLE keimotas.insurance_certificate (
    id text PRIMARY KEY, insurer_id text NOT NULL, insurance_no text NOT NULL,
    vehicle text NOT NULL, deleted_at timestamptz, available_at timestamptz NOT NULL);
CREATE TABLE keimotas.completion_certificate (
    id text PRIMARY KEY, vehicle text NOT NULL, issued_on date NOT NULL, used_by text,
    deleted_at timestamptz, available_at timestamptz NOT NULL);
"""


@pytest.mark.postgres
def test_registry_schema_views_over_keimotas_tables_are_read(postgres_server_url: str) -> None:
    """`retry-pipeline registry schema` DDL, run by a 'DBA' over other tables, is the contract."""
    from click.testing import CliRunner

    from retry_pipeline.adapters.registry import SqlCertificateRegistry
    from retry_pipeline.cli import main

    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    name = f"rp_kmt_views_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        result = CliRunner().invoke(main, ["registry", "schema", "--source-schema", "keimotas"])
        assert result.exit_code == 0, result.output
        with engine.begin() as conn:
            conn.execute(text(SOURCE_DDL))
            conn.execute(text(result.output))
            vehicle = "JA11-VIEW01"
            conn.execute(
                text(
                    "INSERT INTO keimotas.safety_certificate VALUES (:id, :v, :d, 'INS-1', 'NO-1',"
                    " NULL, NULL, :at, 'not for the pipeline')"
                ),
                {"id": "S-VIEW", "v": vehicle, "d": date(2026, 11, 20),
                 "at": SLOT - timedelta(minutes=1)},
            )  # fmt: skip
        registry = SqlCertificateRegistry(registry_engine(url), Settings())
        subject = Application("app-view", "KEI-OSAKA", Procedure.CONTINUOUS, vehicle)
        kinds = frozenset({CertificateKind.SAFETY})
        assert registry.present(subject, kinds, SLOT) == kinds
        assert registry.present(subject, kinds, SLOT - timedelta(minutes=2)) == frozenset()
        assert registry.present_many([(subject, kinds)], SLOT) == [kinds]
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
