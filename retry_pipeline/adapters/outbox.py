"""The outbox (DESIGN 5) over SQL: one outcome per chain, delivered until confirmed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import insert_many, one_of
from retry_pipeline.adapters.orm import OutboxRow
from retry_pipeline.errors import DuplicateRecord
from retry_pipeline.model import (
    Ending,
    Outcome,
    PendingOutcome,
    idempotency_key,
    sorted_kinds,
)

IN_CHUNK = 500


def pending_outcome(row: OutboxRow) -> PendingOutcome:
    """The core's view of an outbox row."""
    return PendingOutcome(
        id=row.id,
        chain_id=row.chain_id,
        idempotency_key=row.idempotency_key,
        application=row.application,
        office=row.office,
        outcome=Outcome(row.outcome),
        missing=tuple(row.missing),
        decided_at=row.decided_at,
        send_count=row.send_count,
    )


class SqlOutbox:
    """``u.outbox``: the outcomes the relay delivers."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self, endings: Sequence[Ending], now: datetime, *, booked_until: datetime | None = None
    ) -> list[PendingOutcome]:
        if not endings:
            return []
        booked = booked_until is not None
        keyed = [
            (e, idempotency_key(e.chain_id, e.outcome), sorted_kinds(e.missing)) for e in endings
        ]
        rows = [
            {
                "chain_id": e.chain_id,
                "idempotency_key": key,
                "application": e.subject.application,
                "office": e.subject.office,
                "outcome": e.outcome.value,
                "missing": missing,
                "decided_at": e.decided_at,
            }
            for e, key, missing in keyed
        ]
        same = {
            "created_at": now,
            "sent_at": now if booked else None,
            "send_count": 1 if booked else 0,
            "next_send_at": booked_until,
        }
        # One INSERT .. RETURNING for the batch, no ORM objects to track (a release of
        # thousands of chains is one statement per batch).
        try:
            with self.session.begin_nested():
                ids = insert_many(self.session, OutboxRow, rows, returning="chain_id", same=same)
        except IntegrityError as exc:
            raise DuplicateRecord("one of these chains already has its outcome") from exc
        # send_count: the sends before this one, as the relay reads it (booked or not)
        return [
            PendingOutcome(
                id=ids[e.chain_id], chain_id=e.chain_id, idempotency_key=key,
                application=e.subject.application, office=e.subject.office, outcome=e.outcome,
                missing=tuple(missing), decided_at=e.decided_at, send_count=0,
            )
            for e, key, missing in keyed
        ]  # fmt: skip

    def existing(self, chain_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(chain_ids))
        for start in range(0, len(unique), IN_CHUNK):
            stmt = select(OutboxRow.chain_id).where(
                OutboxRow.chain_id.in_(unique[start : start + IN_CHUNK])
            )
            found.update(self.session.scalars(stmt))
        return found

    def pending(self, limit: int, *, resend_before: datetime | None) -> list[PendingOutcome]:
        # Never-sent outcomes first, oldest first: a backlog of unconfirmed ones never
        # starves a new one. Then re-sends whose back-off ends by ``resend_before``.
        open_: ColumnElement[bool] = and_(
            OutboxRow.confirmed_at.is_(None), OutboxRow.gave_up_at.is_(None)
        )
        fresh = select(OutboxRow).where(open_, OutboxRow.sent_at.is_(None))
        rows = list(self.session.scalars(fresh.order_by(OutboxRow.id).limit(limit)))
        if resend_before is not None and len(rows) < limit:
            due_at = func.coalesce(OutboxRow.next_send_at, OutboxRow.sent_at)
            again = (
                select(OutboxRow)
                .where(open_, OutboxRow.sent_at.is_not(None), due_at <= resend_before)
                .order_by(due_at, OutboxRow.id)
                .limit(limit - len(rows))
            )
            rows += self.session.scalars(again)
        return [pending_outcome(r) for r in rows]

    def mark_sent(
        self, outbox_ids: Sequence[int], now: datetime, *, resend_at: datetime | None = None
    ) -> None:
        self._update(
            outbox_ids, sent_at=now, send_count=OutboxRow.send_count + 1, next_send_at=resend_at
        )

    def unbook(self, outbox_ids: Sequence[int]) -> None:
        self._update(
            outbox_ids,
            OutboxRow.send_count == 1,  # booked, and not sent again since
            OutboxRow.confirmed_at.is_(None),  # it went after all, and was confirmed
            sent_at=None, send_count=0, next_send_at=None,
        )  # fmt: skip

    def give_up(self, outbox_ids: Sequence[int], now: datetime) -> None:
        self._update(outbox_ids, gave_up_at=now, next_send_at=None)

    def _update(
        self, outbox_ids: Sequence[int], *where: ColumnElement[bool], **values: Any
    ) -> None:
        """``values`` on these rows (and ``where``), one statement per IN_CHUNK ids."""
        for start in range(0, len(outbox_ids), IN_CHUNK):
            part = outbox_ids[start : start + IN_CHUNK]
            self.session.execute(
                update(OutboxRow)
                .where(one_of(self.session, OutboxRow.id, part), *where)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def confirm(self, idempotency_key: str, now: datetime) -> bool:
        # The key begins with its chain's id (``model.idempotency_key``): the row is found
        # through chain_id's unique index; the key itself has none (migration 0012).
        chain_id = idempotency_key.rpartition(":")[0]
        ours = and_(OutboxRow.chain_id == chain_id, OutboxRow.idempotency_key == idempotency_key)
        self.session.execute(
            update(OutboxRow)
            .where(ours, OutboxRow.confirmed_at.is_(None))  # the first confirmation stays
            .values(confirmed_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(self.session.scalar(select(func.count()).select_from(OutboxRow).where(ours)))

    def count_unconfirmed(self) -> int:
        stmt = select(func.count()).select_from(OutboxRow).where(OutboxRow.confirmed_at.is_(None))
        return int(self.session.scalar(stmt) or 0)

    def count_given_up(self) -> int:
        stmt = (
            select(func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.confirmed_at.is_(None), OutboxRow.gave_up_at.is_not(None))
        )
        return int(self.session.scalar(stmt) or 0)
