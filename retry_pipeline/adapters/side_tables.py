"""The small tables beside the retry table: close signals (R10) and dead letters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import CloseSignalRow, DeadLetterRow
from retry_pipeline.calendar import to_local
from retry_pipeline.model import (
    DeadLetter,
    LetterBody,
    letter_body,
    letter_headers,
    letter_text,
)

MAX_REASON = 2000
PURGE_CHUNK = 5_000  # rows deleted per statement: a purge never holds a long lock


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
    """``u.dead_letters``: refused messages: reason, headers, the body's first 64 KiB.

    Any body lands: bytes go to a bytea/BLOB column and the text copy escapes NUL and
    invalid UTF-8, so PostgreSQL's text type never refuses it. Nothing over 64 KiB of a
    body is stored, whatever its size (its size and SHA-256 are).
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        task: str,
        reason: str,
        payload: str | bytes,
        now: datetime,
        *,
        headers: Mapping[str, Any] | None = None,
        whole: LetterBody | None = None,
    ) -> int:
        body = letter_body(payload)
        if whole is not None:  # ``payload`` is already a head: the whole body was measured
            body = LetterBody(body.head, whole.size, whole.sha256)
        row = DeadLetterRow(
            task=letter_text(task.encode("utf-8", "surrogatepass"))[:120],
            reason=letter_text(reason.encode("utf-8", "surrogatepass"))[:MAX_REASON],
            payload=letter_text(body.head),
            received_at=now,
            body=body.head,
            size=body.size,
            sha256=body.sha256,
            headers=letter_headers(headers),
        )
        self.session.add(row)
        self.session.flush()
        return row.id

    def newest(self, limit: int) -> list[DeadLetter]:
        stmt = select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)
        return [
            DeadLetter(
                r.id, r.task, r.reason, r.payload, r.received_at,
                size=len(r.payload) if r.size is None else r.size,
                sha256=r.sha256 or "", headers=r.headers or "",
            )
            for r in self.session.scalars(stmt)
        ]  # fmt: skip

    def purge(self, before: datetime) -> int:
        """Delete the letters received before ``before``, in bounded chunks; how many."""
        total = 0
        while True:
            ids = list(
                self.session.scalars(
                    select(DeadLetterRow.id)
                    .where(DeadLetterRow.received_at < before)
                    .order_by(DeadLetterRow.id)
                    .limit(PURGE_CHUNK)
                )
            )
            if not ids:
                return total
            self.session.execute(
                delete(DeadLetterRow)
                .where(DeadLetterRow.id.in_(ids))
                .execution_options(synchronize_session=False)
            )
            total += len(ids)
