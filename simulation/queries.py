"""Queries only the simulation, the bench and the tests ask of the pipeline's tables.

They read the ORM rows through a ``Session`` the caller opens, so several of them
can share one snapshot (``snapshot``); the pipeline's store has no such methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow, OutboxRow
from retry_pipeline.model import Event
from retry_pipeline.names import REPORT_MISSING as REPORT_TASK


def count_live(session: Session) -> int:
    """How many chains are live."""
    return int(session.scalar(select(func.count()).select_from(ChainRow)) or 0)


def live_chains(session: Session) -> list[ChainRow]:
    """Every live chain's row, by chain id."""
    return list(session.scalars(select(ChainRow).order_by(ChainRow.chain_id)))


def earliest_slot(session: Session) -> datetime | None:
    """The soonest next attempt of any live chain."""
    return session.scalar(select(func.min(ChainRow.next_slot)))


def count_reports_processed(session: Session) -> int:
    """Reports handled so far: each leaves one history line or one dead letter."""
    by_report = or_(
        HistoryRow.event.in_([Event.REPORTED, Event.MERGED, Event.DUPLICATE]),
        (HistoryRow.event == Event.AUTO_CORRECTED) & HistoryRow.attempt_no.is_(None),
    )
    lines = session.scalar(select(func.count()).select_from(HistoryRow).where(by_report))
    letters = session.scalar(
        select(func.count()).select_from(DeadLetterRow).where(DeadLetterRow.task == REPORT_TASK)
    )
    return int(lines or 0) + int(letters or 0)


def count_pending_outcomes(session: Session) -> int:
    """Outcomes the examination side has not confirmed yet."""
    stmt = select(func.count()).select_from(OutboxRow).where(OutboxRow.confirmed_at.is_(None))
    return int(session.scalar(stmt) or 0)


def dead_letter_payloads(session: Session) -> list[str]:
    """The raw bodies of every refused message, newest first."""
    return list(session.scalars(select(DeadLetterRow.payload).order_by(DeadLetterRow.id.desc())))


@dataclass(frozen=True)
class Snapshot:
    """What the harness's loop reads of the pipeline, all in one transaction."""

    processed: int
    live: int
    earliest: datetime | None
    unsent: int
    refused_payloads: list[str]


def snapshot(engine: Engine) -> Snapshot:
    """One transaction: processed reports and the chains and outcomes they made."""
    with Session(engine) as session, session.begin():
        return Snapshot(
            processed=count_reports_processed(session),
            live=count_live(session),
            earliest=earliest_slot(session),
            unsent=count_pending_outcomes(session),
            refused_payloads=dead_letter_payloads(session),
        )
