"""Tables (SQLAlchemy 2 typed ORM): retry table, history, outbox, receipts, Kei-MOTAS.

The pipeline's own tables are on ``Base`` (its migrations create them). The Kei-MOTAS
tables are on ``RegistryBase``: another system owns them (docs/registry.md); the
pipeline only reads them, and only simulations and tests create a stand-in
(``create_registry_standin``).

Instants are stored as naive UTC and read back as aware UTC (``UTCDateTime``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    and_,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC out; naive values are refused."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the pipeline's own tables (the migrations' metadata)."""


class RegistryBase(DeclarativeBase):
    """Declarative base of the Kei-MOTAS tables the registry reads (not migrated here)."""


class ChainRow(Base):
    """The retry table (リトライテーブル): one live record per application (R4, R5)."""

    __tablename__ = "retry_chain"

    chain_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    application: Mapped[str] = mapped_column(String(64), unique=True)
    office: Mapped[str] = mapped_column(String(32), index=True)
    procedure: Mapped[str] = mapped_column(String(16))
    vehicle: Mapped[str] = mapped_column(String(64))
    insurer_id: Mapped[str | None] = mapped_column(String(64))
    insurance_no: Mapped[str | None] = mapped_column(String(64))
    missing: Mapped[list[str]] = mapped_column(JSON)  # still missing
    found: Mapped[list[str]] = mapped_column(JSON)  # found by an attempt of this chain (R3)
    confirmed: Mapped[list[str]] = mapped_column(JSON)  # found by an earlier pre-review step
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts_made: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str] = mapped_column(String(16))
    phase_used: Mapped[int] = mapped_column(Integer, default=0)
    next_slot: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    dispatched_for: Mapped[datetime | None] = mapped_column(UTCDateTime)  # slot last sent
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class HistoryRow(Base):
    """Append-only history of every report, attempt, park and ending (R5)."""

    __tablename__ = "retry_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(String(32), index=True)
    application: Mapped[str] = mapped_column(String(64), index=True)
    office: Mapped[str] = mapped_column(String(32), index=True)
    event: Mapped[str] = mapped_column(String(24))
    attempt_no: Mapped[int | None] = mapped_column(Integer)
    slot: Mapped[datetime | None] = mapped_column(UTCDateTime)
    missing: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[str] = mapped_column(String(500), default="")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # R3: certificates this event saw present (an attempt's finding, a report's confirmed).
    found: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    late_s: Mapped[int | None] = mapped_column(Integer)  # R4a: planned from its arrival
    node: Mapped[str | None] = mapped_column(String(128))  # the worker that wrote the line


# ``model.idempotency_key`` in SQL (both databases), the outbox's check (migration 0012)
KEY_IS_THE_CHAINS = "idempotency_key = chain_id || ':' || outcome"


class OutboxRow(Base):
    """An outcome waiting for the relay (DESIGN 5); one per chain, ever."""

    __tablename__ = "outbox"
    # The key is found through chain_id (migration 0012): it must be the chain's own.
    __table_args__ = (CheckConstraint(KEY_IS_THE_CHAINS, name="ck_outbox_idempotency_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(String(32), unique=True)
    # ``<chain_id>:<outcome>`` (checked): unique as chain_id is, found through it
    idempotency_key: Mapped[str] = mapped_column(String(80))
    application: Mapped[str] = mapped_column(String(64))
    office: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    missing: Mapped[list[str]] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    send_count: Mapped[int] = mapped_column(Integer, default=0)
    # The examination side acknowledged it (retry_pipeline.confirm_outcome); until then
    # the relay sends it again every slot: a broker that forgets loses nothing.
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The fair relay: when an unconfirmed outcome may go again (back-off), and when the
    # relay stopped re-sending it after the cap (an alertable state, counted in metrics).
    next_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def _outbox_indexes() -> tuple[Index, ...]:
    """Partial indexes over the open outcomes only (issue 11): the relay's two queries,
    the unconfirmed list and the given-up count. Confirmed rows (nearly all of a grown
    outbox) sit in none of them (migration 0011). With the primary key and chain_id's, a
    booked outcome enters four indexes, and so does the new version an UPDATE writes
    (migration 0012 dropped the application's and the idempotency key's)."""
    t = OutboxRow.__table__.c
    unconfirmed = t.confirmed_at.is_(None)
    open_ = and_(unconfirmed, t.gave_up_at.is_(None))
    due = func.coalesce(t.next_send_at, t.sent_at)

    def partial(name: str, where: Any, *on: Any) -> Index:
        return Index(name, *on, postgresql_where=where, sqlite_where=where)

    return (
        partial("ix_outbox_unsent", and_(open_, t.sent_at.is_(None)), t.id),
        partial("ix_outbox_resend", and_(open_, t.sent_at.is_not(None)), due, t.id),
        partial("ix_outbox_unconfirmed", unconfirmed, t.id),
        partial("ix_outbox_given_up", and_(unconfirmed, t.gave_up_at.is_not(None)), t.id),
    )


OUTBOX_INDEXES = _outbox_indexes()  # bound to the outbox table as they are made


class CloseSignalRow(Base):
    """An explicit OSS close (R10), earlier than the configured time."""

    __tablename__ = "close_signal"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # Japan-time date it closes
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SafetyRow(RegistryBase):
    """Kei-MOTAS safety certificates (保適証)."""

    __tablename__ = "keimotas_safety_certificate"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vehicle: Mapped[str] = mapped_column(String(64), index=True)
    inspected_on: Mapped[date] = mapped_column(Date)
    insurer_id: Mapped[str] = mapped_column(String(64))
    insurance_no: Mapped[str] = mapped_column(String(64))
    used_by: Mapped[str | None] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InsuranceRow(RegistryBase):
    """Kei-MOTAS insurance certificates (自賠責証)."""

    __tablename__ = "keimotas_insurance_certificate"
    __table_args__ = (Index("ix_insurance_key", "insurer_id", "insurance_no"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    insurer_id: Mapped[str] = mapped_column(String(64))
    insurance_no: Mapped[str] = mapped_column(String(64))
    vehicle: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CompletionRow(RegistryBase):
    """Kei-MOTAS completion certificates (完検証)."""

    __tablename__ = "keimotas_completion_certificate"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vehicle: Mapped[str] = mapped_column(String(64), index=True)
    issued_on: Mapped[date] = mapped_column(Date)
    used_by: Mapped[str | None] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeadLetterRow(Base):
    """A refused message, kept with its raw body for an operator (nothing is lost)."""

    __tablename__ = "dead_letter"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[str] = mapped_column(Text)  # the body's head as NUL-safe text
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The office console (operator): replayed through the intake, or marked resolved.
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replay_result: Mapped[str | None] = mapped_column(String(500))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    resolved_by: Mapped[str | None] = mapped_column(String(64))

    # Any body, also a binary one, as bytes (bytea): its first 64 KiB, its size and hash.
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    headers: Mapped[str | None] = mapped_column(Text)


class UserRow(Base):
    """A console login: office staff see their office only; an operator sees every office."""

    __tablename__ = "console_user"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    office: Mapped[str] = mapped_column(String(32))
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, never the password
    session_version: Mapped[int] = mapped_column(Integer, default=1)  # bumped by passwd
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginFailureRow(Base):
    """Recent failed logins per user name or per address (``user:NAME``, ``addr:IP``)."""

    __tablename__ = "console_login_failure"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)


class HeartbeatRow(Base):
    """The last sign of life of beat or of one worker (``retry-pipeline health``)."""

    __tablename__ = "heartbeat"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # beat, or worker@host
    kind: Mapped[str] = mapped_column(String(16), index=True)  # "beat" | "worker"
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime)  # on the pipeline's clock
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # beat: grid tick sent
    detail: Mapped[str] = mapped_column(String(200), default="")


def create_registry_standin(engine: Any) -> None:
    """Create the Kei-MOTAS tables (a stand-in for simulations and tests, never production)."""
    RegistryBase.metadata.create_all(engine)


class ReceiptRow(Base):
    """A report's receipt waiting for the relay (DESIGN 11); one per report taken."""

    __tablename__ = "report_receipt"
    __table_args__ = (Index("ix_report_receipt_key", "application", "detected_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    application: Mapped[str] = mapped_column(String(64))
    office: Mapped[str] = mapped_column(String(32))
    detected_at: Mapped[str] = mapped_column(String(64))  # ISO text, as in the receipt
    status: Mapped[str] = mapped_column(String(16))
    chain_id: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    send_count: Mapped[int] = mapped_column(Integer, default=0)
