"""Queries only the simulation needs (progress and the end of a run), over the pipeline's tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow
from retry_pipeline.model import Event
from retry_pipeline.names import REPORT_MISSING


def count_reports_processed(session: Session) -> int:
    """Reports handled so far: each leaves one history line or one dead letter."""
    by_report = or_(
        HistoryRow.event.in_([Event.REPORTED, Event.MERGED, Event.DUPLICATE]),
        (HistoryRow.event == Event.AUTO_CORRECTED) & HistoryRow.attempt_no.is_(None),
    )
    lines = session.scalar(select(func.count()).select_from(HistoryRow).where(by_report))
    letters = session.scalar(
        select(func.count()).select_from(DeadLetterRow).where(DeadLetterRow.task == REPORT_MISSING)
    )
    return int(lines or 0) + int(letters or 0)


def count_live(session: Session) -> int:
    """How many chains are live."""
    return int(session.scalar(select(func.count()).select_from(ChainRow)) or 0)


def earliest_slot(session: Session) -> datetime | None:
    """The soonest next attempt of any live chain."""
    return session.scalar(select(func.min(ChainRow.next_slot)))
