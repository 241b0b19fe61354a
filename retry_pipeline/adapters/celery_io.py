"""Celery adapters: slot messages with ETAs; outcomes and receipts to the examination side."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kombu.utils.uuid import uuid

from retry_pipeline.calendar import format_instant
from retry_pipeline.clock import Clock
from retry_pipeline.config import Settings
from retry_pipeline.errors import DeliveryFailed
from retry_pipeline.model import Outcome, PendingOutcome, PendingReceipt
from retry_pipeline.names import ATTEMPT_SLOT

BATCH_COMMANDS = 1000  # Redis commands per pipelined round trip (kombu's default)
KWARGSREPR_MAX = 1024  # as Celery's own kwargsrepr_maxsize


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

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        """One message per outcome, all through one producer, the queue declared once.
        On Redis they go as one pipelined round trip (kombu's ``Producer.batch``), with
        no per-message publish retry (a failed flush raises; the relay sends them again);
        a transport without batches (RabbitMQ) publishes each at once, with Celery's
        retry policy, so a failure can say how many went."""
        s = self.settings
        handed = 0
        with self.app.producer_or_acquire() as producer:
            try:
                producer.maybe_declare(self.app.amqp.queues[s.examination_queue])
                # asked of the open channel, as Producer.batch itself decides
                batched = producer.supports_batch_publish
                with producer.batch(max_size=BATCH_COMMANDS):
                    for outcome in outcomes:
                        resumed = outcome.outcome is Outcome.RESUMED
                        name = s.resume_task if resumed else s.auto_correct_task
                        body = outcome_message(outcome)
                        self._publish(producer, name, body, declare=[], retry=not batched)
                        handed += 0 if batched else 1
            except Exception as exc:
                raise DeliveryFailed(handed) from exc

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        with self.app.producer_or_acquire() as producer:
            self._publish(producer, self.settings.report_received_task, receipt_message(receipt))

    def _publish(self, producer: Any, name: str, body: dict[str, Any], **options: Any) -> None:
        """One task message by name on the examination queue, through Celery's own message
        builder and publisher (serializer, signing, routing, retry policy) but without
        ``send_task``'s per-call routing and task-sent event, and with a plain ``repr``
        of the body for ``kwargsrepr`` (Celery's saferepr costs more than the rest of
        the message): the relay and the 08:30 release send thousands (issue 11)."""
        amqp = self.app.amqp
        message = amqp.create_task_message(
            uuid(), name, (), body, create_sent_event=False, ignore_result=True,
            argsrepr="()", kwargsrepr=repr(body)[:KWARGSREPR_MAX],
        )  # fmt: skip
        amqp.send_task_message(
            producer, name, message, queue=self.settings.examination_queue, **options
        )
