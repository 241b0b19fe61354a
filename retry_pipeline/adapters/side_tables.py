"""The small tables beside the retry table: close signals (R10) and dead letters."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import CloseSignalRow, DeadLetterRow
from retry_pipeline.calendar import to_local
from retry_pipeline.model import DeadLetter

MAX_REASON = 2000


class SqlCloseSignals:
    """``u.signals``: explicit OSS close signals."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, at: datetime, now: datetime) -> None:
        self.session.add(CloseSignalRow(day=to_local(at).date(), at=at, recorded_at=now))

    def between(self, first_day: date, last_day: date) -> list[datetime]:
        stmt = select(CloseSignalRow.at).where(
            CloseSignalRow.day >= first_day, CloseSignalRow.day <= last_day
        )
        return list(self.session.scalars(stmt.order_by(CloseSignalRow.at)))


class SqlDeadLetters:
    """``u.dead_letters``: refused messages with the reason and the raw body."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, task: str, reason: str, payload: str, now: datetime) -> int:
        row = DeadLetterRow(task=task, reason=reason[:MAX_REASON], payload=payload, received_at=now)
        self.session.add(row)
        self.session.flush()
        return row.id

    def newest(self, limit: int) -> list[DeadLetter]:
        stmt = select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)
        return [
            DeadLetter(r.id, r.task, r.reason, r.payload, r.received_at)
            for r in self.session.scalars(stmt)
        ]
