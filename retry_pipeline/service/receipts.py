"""Receipts (DESIGN 11): every report taken tells the examination side what became of it.

A receipt is written in the transaction that decides (or refuses) its report, handed
to the broker after the commit, and by the relay at the next tick when that failed.
It is sent once: a receipt the broker forgets is made again when the sender, having
waited, re-sends the report (``retry_pipeline.client.DurableSender``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from retry_pipeline.calendar import format_instant, parse_instant
from retry_pipeline.errors import InvalidInstant
from retry_pipeline.model import PendingReceipt, Receipt, ReceiptStatus, Report
from retry_pipeline.ports import UnitOfWork
from retry_pipeline.service.context import Deps

log = logging.getLogger(__name__)

RELAY_LIMIT = 500


def receipt_of(report: Report, status: ReceiptStatus, chain_id: str, reason: str) -> Receipt:
    """The receipt of a report that was read and decided."""
    subject = report.subject
    detected = format_instant(report.detected_at)
    return Receipt(subject.application, subject.office, detected, status, chain_id, reason)


def refusal_receipt(message: Any, reason: str) -> Receipt | None:
    """The receipt of a refused report message, when it names an application to answer.

    ``detected_at`` is the message's own text (in Japan time when it can be read), so
    the sender can match it; a message without a text application gets no receipt.
    """
    if not isinstance(message, dict):
        return None
    application, office = message.get("application"), message.get("office")
    if not isinstance(application, str) or not application.strip():
        return None
    raw = message.get("detected_at")
    detected = raw if isinstance(raw, str) else ""
    with contextlib.suppress(InvalidInstant):  # unreadable: answered with its own text
        detected = format_instant(parse_instant(detected))
    office_text = office.strip() if isinstance(office, str) else ""
    return Receipt(application.strip(), office_text, detected, ReceiptStatus.REFUSED, None, reason)


def keep_receipts(deps: Deps, u: UnitOfWork, receipts: Sequence[Receipt], now: datetime) -> None:
    """Write the receipts in this unit; deliver them once it has committed."""
    if not receipts:
        return
    pending = u.receipts.add(receipts, now)
    u.after_commit(lambda: deliver_receipts(deps, pending))


def deliver_receipts(deps: Deps, pending: Sequence[PendingReceipt]) -> None:
    """Hand receipts to the examination side; what fails stays for the relay."""
    sent = []
    for receipt in pending:
        try:
            deps.gateway.deliver_receipt(receipt)
        except Exception:
            log.exception("could not deliver receipt %d; the relay will", receipt.id)
            break
        sent.append(receipt.id)
    if sent:
        with deps.store.unit() as u:
            u.receipts.mark_sent(sent, deps.clock.now())


def relay_receipts(deps: Deps, limit: int = RELAY_LIMIT) -> int:
    """Deliver the receipts never handed to the broker (it was down at commit)."""
    with deps.store.unit() as u:
        pending = u.receipts.pending(limit)
    deliver_receipts(deps, pending)
    return len(pending)
