"""Receipts (DESIGN 11) over SQL: one row per report taken, handed to the broker once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import ReceiptRow
from retry_pipeline.model import PendingReceipt, Receipt, ReceiptStatus

IN_CHUNK = 500


def pending_receipt(row: ReceiptRow) -> PendingReceipt:
    """The core's view of a receipt row."""
    receipt = Receipt(
        application=row.application,
        office=row.office,
        detected_at=row.detected_at,
        status=ReceiptStatus(row.status),
        chain_id=row.chain_id,
        reason=row.reason,
    )
    return PendingReceipt(row.id, receipt)


class SqlReceipts:
    """``u.receipts``: the receipts the relay delivers."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, receipts: Sequence[Receipt], now: datetime) -> list[PendingReceipt]:
        rows = [
            ReceiptRow(
                application=r.application[:64],
                office=r.office[:32],
                detected_at=r.detected_at[:64],
                status=r.status.value,
                chain_id=r.chain_id,
                reason=r.reason[:500],
                created_at=now,
                sent_at=None,
                send_count=0,
            )
            for r in receipts
        ]
        if not rows:
            return []
        self.session.add_all(rows)
        self.session.flush()
        return [pending_receipt(r) for r in rows]

    def taken(self, applications: Sequence[str]) -> dict[str, set[datetime]]:
        found: dict[str, set[datetime]] = {}
        unique = sorted(set(applications))
        for start in range(0, len(unique), IN_CHUNK):
            stmt = select(ReceiptRow.application, ReceiptRow.detected_at).where(
                ReceiptRow.application.in_(unique[start : start + IN_CHUNK]),
                ReceiptRow.status != ReceiptStatus.REFUSED.value,
            )
            for application, detected_at in self.session.execute(stmt):
                # Taken reports' receipts always hold format_instant text.
                found.setdefault(application, set()).add(datetime.fromisoformat(detected_at))
        return found

    def pending(self, limit: int) -> list[PendingReceipt]:
        stmt = (
            select(ReceiptRow)
            .where(ReceiptRow.sent_at.is_(None))
            .order_by(ReceiptRow.id)
            .limit(limit)
        )
        return [pending_receipt(r) for r in self.session.scalars(stmt)]

    def mark_sent(self, receipt_ids: Sequence[int], now: datetime) -> None:
        ids = list(receipt_ids)
        for start in range(0, len(ids), IN_CHUNK):
            self.session.execute(
                update(ReceiptRow)
                .where(ReceiptRow.id.in_(ids[start : start + IN_CHUNK]))
                .values(sent_at=now, send_count=ReceiptRow.send_count + 1)
                .execution_options(synchronize_session=False)
            )
