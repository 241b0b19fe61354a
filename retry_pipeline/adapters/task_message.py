"""Celery's task message, written directly: protocol 2 headers and one kombu publish."""

from __future__ import annotations

from typing import Any

from celery.utils.nodenames import anon_nodename
from kombu.utils.uuid import uuid

KWARGSREPR_MAX = 1024  # as Celery's own kwargsrepr_maxsize

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
