"""The outbox (DESIGN 5): one outcome per chain, delivered at least once until confirmed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import OutboxRow
from retry_pipeline.model import Application, CertificateKind, Outcome, sorted_kinds


@dataclass(frozen=True)
class PendingOutcome:
    """An outbox row the relay has to deliver."""

    id: int
    chain_id: str
    idempotency_key: str
    application: str
    office: str
    outcome: Outcome
    missing: tuple[str, ...]
    decided_at: datetime
    send_count: int


def idempotency_key(chain_id: str, outcome: Outcome) -> str:
    """The key every delivery of a chain's outcome carries (DESIGN 5)."""
    return f"{chain_id}:{outcome.value}"


class OutboxUnit:
    """The outbox part of a unit of work (``StoreUnit`` inherits it)."""

    session: Session

    def count_pending_outcomes(self) -> int:
        """Outcomes the examination side has not confirmed yet."""
        stmt = select(func.count()).select_from(OutboxRow).where(OutboxRow.confirmed_at.is_(None))
        return int(self.session.scalar(stmt) or 0)

    def add_outcome(
        self,
        chain_id: str,
        subject: Application,
        outcome: Outcome,
        *,
        missing: frozenset[CertificateKind],
        decided_at: datetime,
        now: datetime,
    ) -> PendingOutcome:
        """Write one outcome to the outbox; a second one for the chain fails (one ending)."""
        row = outbox_row(chain_id, subject, outcome, missing, decided_at, now)
        self.session.add(row)
        self.session.flush()
        return pending_outcome(row)

    def add_outcome_once(
        self,
        chain_id: str,
        subject: Application,
        outcome: Outcome,
        *,
        missing: frozenset[CertificateKind],
        decided_at: datetime,
        now: datetime,
    ) -> PendingOutcome | None:
        """As ``add_outcome``; None when the chain already has its outcome (a duplicate)."""
        try:
            with self.session.begin_nested():
                return self.add_outcome(
                    chain_id, subject, outcome, missing=missing, decided_at=decided_at, now=now
                )
        except IntegrityError:
            return None

    # -- outbox ------------------------------------------------------------------
    def pending_outcomes(
        self, limit: int = 100, *, resend_before: datetime | None = None
    ) -> list[PendingOutcome]:
        """Outcomes never sent, or sent before ``resend_before`` and not confirmed; oldest first."""
        due: ColumnElement[bool] = OutboxRow.sent_at.is_(None)
        if resend_before is not None:
            due = or_(due, OutboxRow.sent_at < resend_before)
        stmt = (
            select(OutboxRow)
            .where(OutboxRow.confirmed_at.is_(None), due)
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        return [pending_outcome(r) for r in self.session.scalars(stmt)]

    def confirm_outcome(self, idempotency_key: str, now: datetime) -> bool:
        """The examination side has the outcome; False for an unknown key."""
        result = self.session.execute(
            update(OutboxRow)
            .where(OutboxRow.idempotency_key == idempotency_key)
            .values(confirmed_at=func.coalesce(OutboxRow.confirmed_at, now))
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def mark_sent(self, outbox_id: int, now: datetime) -> None:
        """The relay handed the outcome to the broker."""
        self.mark_sent_many([outbox_id], now)

    def mark_sent_many(self, outbox_ids: Sequence[int], now: datetime) -> None:
        """The relay handed these outcomes to the broker."""
        self.session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(list(outbox_ids)))
            .values(sent_at=now, send_count=OutboxRow.send_count + 1)
            .execution_options(synchronize_session=False)
        )


def outbox_row(
    chain_id: str,
    subject: Application,
    outcome: Outcome,
    missing: frozenset[CertificateKind],
    decided_at: datetime,
    now: datetime,
) -> OutboxRow:
    return OutboxRow(
        chain_id=chain_id,
        idempotency_key=idempotency_key(chain_id, outcome),
        application=subject.application,
        office=subject.office,
        outcome=outcome.value,
        missing=sorted_kinds(missing),
        decided_at=decided_at,
        created_at=now,
        sent_at=None,
        send_count=0,
    )


def pending_outcome(row: OutboxRow) -> PendingOutcome:
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
