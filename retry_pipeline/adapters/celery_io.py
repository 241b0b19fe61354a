"""Celery adapters: slot messages with ETAs; outcomes and receipts to the examination side."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from retry_pipeline.calendar import format_instant
from retry_pipeline.clock import Clock
from retry_pipeline.config import Settings
from retry_pipeline.model import Outcome, PendingOutcome, PendingReceipt
from retry_pipeline.names import ATTEMPT_SLOT


class CeleryDispatcher:
    """Sends ``retry_pipeline.attempt_slot`` with ``eta`` at its slot (on the real clock)."""

    def __init__(self, app: Any, clock: Clock, settings: Settings) -> None:
        self.app = app
        self.clock = clock
        self.settings = settings

    def send_slot(self, slot: datetime) -> None:
        options: dict[str, Any] = {"queue": self.settings.queue}
        if slot > self.clock.now():
            options["eta"] = self.clock.to_real(slot)
        self.app.send_task(ATTEMPT_SLOT, kwargs={"slot": slot.isoformat()}, **options)


def outcome_message(outcome: PendingOutcome) -> dict[str, Any]:
    """The JSON body of an outcome task (the examination side's contract)."""
    return {
        "application": outcome.application,
        "office": outcome.office,
        "chain_id": outcome.chain_id,
        "outcome": outcome.outcome.value,
        "missing": list(outcome.missing),
        "decided_at": format_instant(outcome.decided_at),
        "idempotency_key": outcome.idempotency_key,
    }


def receipt_message(pending: PendingReceipt) -> dict[str, Any]:
    """The JSON body of ``examination.report_received`` (DESIGN 11)."""
    r = pending.receipt
    return {
        "application": r.application,
        "office": r.office,
        "detected_at": r.detected_at,
        "status": r.status.value,
        "chain_id": r.chain_id,
        "reason": r.reason,
    }


class CeleryExaminationGateway:
    """Sends outcomes (``examination.resume_pre_review`` / ``examination.auto_correct``) and
    receipts (``examination.report_received``) by name."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def deliver(self, outcome: PendingOutcome) -> None:
        s = self.settings
        name = s.resume_task if outcome.outcome is Outcome.RESUMED else s.auto_correct_task
        self.app.send_task(name, kwargs=outcome_message(outcome), queue=s.examination_queue)

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        s = self.settings
        body = receipt_message(receipt)
        self.app.send_task(s.report_received_task, kwargs=body, queue=s.examination_queue)
