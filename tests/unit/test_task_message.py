"""``TaskPublisher`` writes the message Celery's own ``send_task_message`` would.

The outcome and receipt messages skip Celery's per-message machinery (issue 11), so
this compares, field by field, what each hands to kombu's ``Producer.publish``: the
headers (``as_task_v2``), the properties, the body and every publish option, on the
app's settings and on changed ones (another serializer, compression, delivery mode,
retry policy). A Celery upgrade that changes its protocol 2 fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu import Exchange, Queue

from retry_pipeline.adapters.task_message import KWARGSREPR_MAX, TaskPublisher

QUEUE = "examination"
NAME = "examination.auto_correct"
BODY = {"application": "A-1", "office": "O1", "missing": ["safety"], "note": "x" * 2000}


class Recorder:
    """A kombu producer that records ``publish`` and ``maybe_declare``."""

    def __init__(self) -> None:
        self.published: list[tuple[Any, dict[str, Any]]] = []
        self.declared: list[Any] = []

    def publish(self, body: Any, **options: Any) -> None:
        self.published.append((body, options))

    def maybe_declare(self, entity: Any) -> None:
        self.declared.append(entity)


def _app(**conf: Any) -> Celery:
    app = Celery("message-test", broker="memory://", set_as_current=False)
    app.conf.update(task_queues=(Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE),), **conf)
    return app


def _celery_sends(
    app: Celery, task_id: str, retry: bool, declare_each: bool = False
) -> tuple[Any, dict[str, Any]]:
    message = app.amqp.create_task_message(
        task_id, NAME, (), BODY, create_sent_event=False, ignore_result=True,
        argsrepr="()", kwargsrepr=repr(BODY)[:KWARGSREPR_MAX],
    )  # fmt: skip
    producer = Recorder()
    # a batch declares the queue once, before; a single message as send_task does
    declare = {} if declare_each else {"declare": []}
    app.amqp.send_task_message(producer, NAME, message, queue=QUEUE, retry=retry, **declare)
    return producer.published[0]


def _ours(app: Celery, retry: bool | None, declare_each: bool = False) -> tuple[Recorder, str]:
    producer = Recorder()
    publish = TaskPublisher(app, producer, QUEUE, retry, declare_each=declare_each)
    return producer, publish(NAME, BODY)


CONFS = [
    {},
    {"task_serializer": "pickle", "task_compression": "zlib"},
    {"task_default_delivery_mode": "transient"},
    {"task_publish_retry_policy": {"max_retries": 7, "interval_start": 1}},
]


@pytest.mark.parametrize("conf", CONFS)
@pytest.mark.parametrize("retry", [True, False])
@pytest.mark.parametrize("declare_each", [False, True], ids=["batch", "single"])
def test_the_same_message_and_options_as_celerys_own(
    conf: dict[str, Any], retry: bool, declare_each: bool
) -> None:
    app = _app(**conf)
    producer, task_id = _ours(app, retry, declare_each)
    body, options = producer.published[0]
    want_body, want = _celery_sends(app, task_id, retry, declare_each)
    assert body == want_body
    # Celery also passes the timeouts (None: the transport's own) and lets kombu route
    want = {k: v for k, v in want.items() if k not in ("timeout", "confirm_timeout")}
    origin = want["headers"]["origin"]  # this host's anonymous node name, both ways
    assert options["headers"]["origin"] == origin
    assert options == want


def test_the_retry_default_is_the_apps() -> None:
    for setting in (True, False):
        producer, _ = _ours(_app(task_publish_retry=setting), None)
        assert producer.published[0][1]["retry"] is setting


def test_each_message_its_own_id_and_the_queue_declared_once() -> None:
    app = _app()
    producer = Recorder()
    publish = TaskPublisher(app, producer, QUEUE)
    ids = [publish(NAME, BODY) for _ in range(3)]
    assert len(set(ids)) == 3
    assert [o["headers"]["id"] for _, o in producer.published] == ids
    assert [o["correlation_id"] for _, o in producer.published] == ids
    assert [q.name for q in producer.declared] == [QUEUE]
    assert len(producer.published[0][1]["headers"]["kwargsrepr"]) == KWARGSREPR_MAX


def test_each_publish_gets_a_declare_list_of_its_own() -> None:
    producer = Recorder()
    publish = TaskPublisher(_app(), producer, QUEUE, declare_each=True)
    publish(NAME, BODY)
    producer.published[0][1]["declare"].append("kombu appended this")
    publish(NAME, BODY)
    assert [q.name for q in producer.published[1][1]["declare"]] == [QUEUE]
