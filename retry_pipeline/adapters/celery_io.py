"""Celery adapters: slot messages with ETAs; outcomes and receipts to the examination side."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery.utils.nodenames import anon_nodename
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
                # asked of the open channel, as Producer.batch itself decides
                batched = producer.supports_batch_publish
                publish = TaskPublisher(self.app, producer, s.examination_queue, not batched)
                with producer.batch(max_size=BATCH_COMMANDS):
                    for outcome in outcomes:
                        resumed = outcome.outcome is Outcome.RESUMED
                        name = s.resume_task if resumed else s.auto_correct_task
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


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_headers(task_id: str, name: str, kwargsrepr: str, origin: str) -> dict[str, Any]:
    """Celery's protocol 2 headers of a task sent by name with keyword arguments only,
    no ETA, no parent, its result ignored: what ``app.amqp.as_task_v2`` writes
    (``tests/unit/test_task_message.py`` compares the two)."""
    return {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "()", "kwargsrepr": kwargsrepr, "origin": origin,
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }  # fmt: skip


class TaskPublisher:
    """Publishes task messages by name on one queue through an open kombu producer.

    The queue is declared once (``maybe_declare``). Each message is Celery's protocol 2
    (``task_headers``; the body ``((), kwargs, embed)``), serialized, compressed and
    persisted as the app and the queue are configured (so signing, the ``auth``
    serializer, applies), retried by the app's publish policy when ``retry`` (default:
    the app's ``task_publish_retry``), as ``send_task_message`` would send it to the
    default exchange with the queue's name as routing key. It skips that function's
    per-call routing, option merging and the ``before_task_publish`` /
    ``after_task_publish`` signals (a tracing hook on them sees no outcome), and
    Celery's ``saferepr``: the relay and the 08:30 release send thousands, and that
    machinery cost about a third of each message (issue 11).
    """

    def __init__(
        self,
        app: Any,
        producer: Any,
        queue: str,
        retry: bool | None = None,
        *,
        declare_each: bool = False,
    ) -> None:
        conf = app.conf
        declared = app.amqp.queues[queue]  # made (task_create_missing_queues) if unknown
        producer.maybe_declare(declared)
        # declare_each: also inside each publish, as send_task_message does, so a publish
        # retried over a new connection declares the queue again (a single receipt)
        self.declare = [declared] if declare_each else []
        self.producer = producer
        self.origin = anon_nodename()
        self.options: dict[str, Any] = {
            "exchange": "", "routing_key": queue, "serializer": conf.task_serializer,
            "compression": conf.task_compression,
            "delivery_mode": declared.exchange.delivery_mode or conf.task_default_delivery_mode,
            "retry": conf.task_publish_retry if retry is None else retry,
            "retry_policy": conf.task_publish_retry_policy, "reply_to": "",
        }  # fmt: skip

    def __call__(self, name: str, kwargs: dict[str, Any]) -> str:
        task_id = uuid()
        headers = task_headers(task_id, name, repr(kwargs)[:KWARGSREPR_MAX], self.origin)
        declare = list(self.declare)  # a list of its own: kombu may append to it
        self.producer.publish(
            ((), kwargs, EMBED), headers=headers, correlation_id=task_id, declare=declare,
            **self.options,
        )  # fmt: skip
        return task_id
