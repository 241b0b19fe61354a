"""``RedisTaskWire`` writes, on a real Redis, the bytes kombu writes for the same task.

The release's outcomes skip kombu's per-message publish (issue 11); this puts the same
message through both on a private redis-server and compares the list's entries byte for
byte once the two random ids (task id, delivery tag) are named: any kombu or Celery
upgrade that changes the envelope fails here. ``TaskPublisher`` itself is compared with
Celery's own ``send_task_message`` in ``tests/unit/test_task_message.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Queue

from retry_pipeline.adapters.redis_wire import LPUSH_MAX, uuid4_strings, wire_for
from retry_pipeline.adapters.task_message import TaskPublisher
from tests.support import PrivateRedis

QUEUE = "examination-wire"
NAME = "examination.auto_correct"
KWARGS: list[dict[str, Any]] = [
    {"application": "A-1", "office": "O1", "missing": ["safety"], "decided_at": "2026-11-30"},
    # what JSON escapes: quotes, backslashes, control characters, non-ASCII (staff names)
    {"application": 'A-"2"\\', "office": "大阪\n", "missing": [], "note": "\u3000\t\x00"},
    {"application": "A-3", "office": "O1", "missing": ["insurance"], "note": "x" * 3000},
]


@pytest.fixture
def app(private_redis: PrivateRedis) -> Iterator[Celery]:
    app = Celery("wire-test", broker=private_redis.url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete(QUEUE)


def _raw(app: Celery) -> list[str]:
    """The queue's entries, oldest (first read) first."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        entries = client.lrange(QUEUE, 0, -1)
        client.delete(QUEUE)
    return [e.decode() for e in reversed(entries)]


def _named(entry: str) -> str:
    """The entry with its task id and delivery tag replaced by their names."""
    parsed = json.loads(entry)
    task_id = parsed["headers"]["id"]
    tag = parsed["properties"]["delivery_tag"]
    assert task_id != tag
    return entry.replace(task_id, "TASK-ID").replace(tag, "DELIVERY-TAG")


def _by_kombu(app: Celery, messages: list[tuple[str, dict[str, Any]]]) -> list[str]:
    with app.producer_or_acquire() as producer:
        publish = TaskPublisher(app, producer, QUEUE, retry=False)
        for name, kwargs in messages:
            publish(name, kwargs)
    return _raw(app)


def _push(app: Celery, messages: list[tuple[str, dict[str, Any]]]) -> list[str]:
    with app.producer_or_acquire() as producer:
        wire = wire_for(app, producer, app.amqp.queues[QUEUE])
        assert wire is not None, "the wire refused a plain JSON queue on Redis"
        return wire.push(messages)


def _by_wire(app: Celery, messages: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], Any]:
    ids = _push(app, messages)
    return _raw(app), ids


def test_the_wire_writes_kombus_bytes(app: Celery) -> None:
    messages = [(NAME, k) for k in KWARGS] + [("examination.resume_pre_review", KWARGS[0])]
    kombu, (wire, ids) = _by_kombu(app, messages), _by_wire(app, messages)
    assert len(kombu) == len(wire) == len(messages)
    for ours, theirs in zip(wire, kombu, strict=True):
        assert _named(ours) == _named(theirs)
    assert [json.loads(e)["headers"]["id"] for e in wire] == ids
    assert len({json.loads(e)["properties"]["delivery_tag"] for e in wire} | set(ids)) == 8


def test_a_kombu_consumer_reads_the_wires_messages_in_order(app: Celery) -> None:
    n = 2 * LPUSH_MAX + 7  # three LPUSH commands in one round trip
    messages = [(NAME, {"application": f"A-{i}", "office": "O1"}) for i in range(n)]
    ids = _push(app, messages)
    got: list[tuple[str, Any]] = []
    with Connection(app.conf.broker_url) as conn:
        queue = conn.SimpleQueue(QUEUE, serializer="json")
        for _ in range(n):
            message = queue.get(timeout=5)
            got.append((message.headers["id"], message.decode()))
            message.ack()
        queue.close()
    assert [task_id for task_id, _ in got] == ids
    assert [body[1]["application"] for _, body in got] == [f"A-{i}" for i in range(n)]
    assert all(body[0] == [] and body[2]["chain"] is None for _, body in got)


REFUSED: list[tuple[str, dict[str, Any], Any]] = [
    ("signed or pickled messages", {"task_serializer": "pickle"}, Queue(QUEUE)),
    ("compressed messages", {"task_compression": "zlib"}, Queue(QUEUE)),
    ("an expiring queue", {}, Queue(QUEUE, expires=60.0)),
    ("a priority queue", {}, Queue(QUEUE, max_priority=9)),
]


@pytest.mark.parametrize(("why", "conf", "queue"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_wire_leaves_to_kombu_what_kombu_would_write_otherwise(
    private_redis: PrivateRedis, why: str, conf: dict[str, Any], queue: Queue
) -> None:
    app = Celery("wire-refusal", broker=private_redis.url, set_as_current=False)
    app.conf.update(task_queues=(queue,), **conf)
    with app.producer_or_acquire() as producer:
        assert wire_for(app, producer, app.amqp.queues[QUEUE]) is None, why
    plain = Celery("wire-plain", broker=private_redis.url, set_as_current=False)
    with plain.producer_or_acquire() as producer:
        assert wire_for(plain, producer, plain.amqp.queues[QUEUE]) is not None


@pytest.mark.parametrize("prefixed", [False, True], ids=["another transport", "a key prefix"])
def test_the_wire_is_for_plain_redis_only(private_redis: PrivateRedis, prefixed: bool) -> None:
    broker = private_redis.url if prefixed else "memory://"
    app = Celery("wire-other", broker=broker, set_as_current=False)
    if prefixed:
        app.conf.broker_transport_options = {"global_keyprefix": "rp_"}
    with app.producer_or_acquire() as producer:
        assert wire_for(app, producer, app.amqp.queues[QUEUE]) is None


def test_ids_are_random_version_4_uuids() -> None:
    ids = uuid4_strings(5000)
    assert len(set(ids)) == 5000
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert uuid4_strings(0) == []
