"""Celery adapters: slot messages with ETAs; outcomes and receipts to the examination side."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from retry_pipeline.adapters.redis_wire import wire_for
from retry_pipeline.adapters.task_message import TaskPublisher
from retry_pipeline.calendar import format_instant
from retry_pipeline.clock import Clock
from retry_pipeline.config import Settings
from retry_pipeline.errors import DeliveryFailed
from retry_pipeline.model import Outcome, PendingOutcome, PendingReceipt
from retry_pipeline.names import ATTEMPT_SLOT

BATCH_COMMANDS = 1000  # Redis commands per pipelined round trip (kombu's default)


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
        On kombu's Redis transport they are written as one round trip (``RedisTaskWire``:
        kombu's bytes, many to an LPUSH), with no per-message publish retry (a failed
        write raises; the relay sends them again). Where the wire does not apply
        (RabbitMQ, signing or another serializer, compression, an expiring queue, a key
        prefix: ``wire_for``) kombu publishes them, batched where the transport batches
        (``Producer.batch``); a transport without batches publishes each at once, with
        Celery's retry policy, so a failure can say how many went."""
        if not outcomes:
            return
        s = self.settings
        named = [
            (s.resume_task if o.outcome is Outcome.RESUMED else s.auto_correct_task, o)
            for o in outcomes
        ]
        handed = 0
        with self.app.producer_or_acquire() as producer:
            try:
                queue = self.app.amqp.queues[s.examination_queue]
                wire = wire_for(self.app, producer, queue)  # declares the queue
                if wire is not None:
                    wire.push([(name, outcome_message(o)) for name, o in named])
                    return
                # asked of the open channel, as Producer.batch itself decides
                batched = producer.supports_batch_publish
                publish = TaskPublisher(self.app, producer, s.examination_queue, not batched)
                with producer.batch(max_size=BATCH_COMMANDS):
                    for name, outcome in named:
                        publish(name, outcome_message(outcome))
                        handed += 0 if batched else 1
            except Exception as exc:
                raise DeliveryFailed(handed) from exc

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        with self.app.producer_or_acquire() as producer:
            publish = TaskPublisher(
                self.app, producer, self.settings.examination_queue, declare_each=True
            )
            publish(self.settings.report_received_task, receipt_message(receipt))
