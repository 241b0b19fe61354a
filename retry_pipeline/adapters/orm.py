"""Tables (SQLAlchemy 2 typed ORM): retry table, history, outbox, close signals, Kei-MOTAS.

Instants are stored as naive UTC and read back as aware UTC (``UTCDateTime``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
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
    """Declarative base of every table."""


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
    node: Mapped[str | None] = mapped_column(String(128))  # the worker that wrote the line


class OutboxRow(Base):
    """An outcome waiting for the relay (DESIGN 5); one per chain, ever."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(String(32), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    application: Mapped[str] = mapped_column(String(64), index=True)
    office: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    missing: Mapped[list[str]] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    send_count: Mapped[int] = mapped_column(Integer, default=0)
    # The examination side acknowledged it (retry_pipeline.confirm_outcome); until then
    # the relay sends it again every slot: a broker that forgets loses nothing.
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class CloseSignalRow(Base):
    """An explicit OSS close (R10), earlier than the configured time."""

    __tablename__ = "close_signal"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # Japan-time date it closes
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SafetyRow(Base):
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


class InsuranceRow(Base):
    """Kei-MOTAS insurance certificates (自賠責証)."""

    __tablename__ = "keimotas_insurance_certificate"
    __table_args__ = (Index("ix_insurance_key", "insurer_id", "insurance_no"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    insurer_id: Mapped[str] = mapped_column(String(64))
    insurance_no: Mapped[str] = mapped_column(String(64))
    vehicle: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CompletionRow(Base):
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
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
