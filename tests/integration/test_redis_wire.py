"""``RedisTaskWire`` writes, on a real Redis, the bytes kombu writes for the same task.

The release's outcomes skip kombu's per-message publish (issue 11); this puts the same
message through both on a private redis-server and compares the list's entries byte for
byte once the two random ids (task id, delivery tag) are named: any kombu or Celery
upgrade that changes the envelope fails here. ``TaskPublisher`` itself is compared with
Celery's own ``send_task_message`` in ``tests/unit/test_task_message.py``.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Queue, serialization
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import SentinelChannel
from kombu.utils import json as kombu_json

from retry_pipeline.adapters.celery_io import CeleryExaminationGateway
from retry_pipeline.adapters.redis_wire import (
    LPUSH_MAX,
    RedisTaskWire,
    kombu_writes_as_the_wire,
    uuid4_strings,
    wire_for,
)
from retry_pipeline.adapters.task_message import TaskPublisher
from retry_pipeline.config import Settings
from retry_pipeline.errors import DeliveryFailed
from retry_pipeline.model import Outcome, PendingOutcome
from simulation.redis_server import PrivateRedis

NAME = "examination.auto_correct"
KWARGS: list[dict[str, Any]] = [
    {"application": "A-1", "office": "O1", "missing": ["safety"], "decided_at": "2026-11-30"},
    # what JSON escapes: quotes, backslashes, control characters, non-ASCII (staff names)
    {"application": 'A-"2"\\', "office": "大阪\n", "missing": [], "note": "\u3000\t\x00"},
    {"application": "A-3", "office": "O1", "missing": ["insurance"], "note": "x" * 3000},
    # what only kombu's JSON encoder writes (the standard library's refuses them)
    {"application": "A-4", "at": datetime(2026, 11, 30, 8, 30, tzinfo=UTC),
     "id": uuid.UUID(int=5), "amount": Decimal("1.50"), "ratio": 0.1},
]  # fmt: skip
# settings under which the wire writes (each compared with kombu): the defaults, kombu's
# priority lists (another key for priority 0), transient messages, a priority queue
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "priority steps": {"broker_transport_options": {"priority_steps": [1, 5, 9], "sep": ":"}},
    "transient": {"task_default_delivery_mode": "transient"},
    "priority queue": {"task_queue_max_priority": 9},
}


class Wire:
    """A Celery app on the private Redis with a queue of its own."""

    def __init__(self, url: str, **conf: Any) -> None:
        self.queue = f"exam-wire-{uuid.uuid4().hex[:8]}"
        self.app = Celery("wire-test", broker=url, set_as_current=False)
        base = {"task_serializer": "json", "accept_content": ["json", "pickle"]}
        self.app.conf.update({**base, "task_ignore_result": True, **conf})

    def raw(self) -> tuple[list[bytes], list[str]]:
        """The queue's lists (kombu names them; the bindings aside) and their entries,
        oldest (first read) first; the lists are emptied."""
        with self.app.connection_for_write() as conn:
            client = conn.default_channel.client
            keys = sorted(client.keys(self.queue + "*"))
            entries = [e for key in keys for e in reversed(client.lrange(key, 0, -1))]
            if keys:
                client.delete(*keys)
        return keys, [e.decode() for e in entries]

    def by_kombu(self, messages: list[tuple[str, dict[str, Any]]]) -> tuple[list[bytes], list[str]]:
        with self.app.producer_or_acquire() as producer:
            publish = TaskPublisher(self.app, producer, self.queue, retry=False)
            for name, kwargs in messages:
                publish(name, kwargs)
        return self.raw()

    def wire(self, producer: Any) -> RedisTaskWire:
        wire = wire_for(self.app, producer, self.app.amqp.queues[self.queue])
        assert wire is not None, "the wire refused a plain JSON queue on Redis"
        return wire

    def stdlib_first(self) -> bool:
        with self.app.producer_or_acquire() as producer:
            return self.wire(producer).stdlib_first

    def push(self, messages: list[tuple[str, dict[str, Any]]]) -> list[str]:
        with self.app.producer_or_acquire() as producer:
            return self.wire(producer).push(messages)


def _named(entry: str) -> str:
    """The entry with its task id and delivery tag replaced by their names."""
    parsed = json.loads(entry)
    task_id = parsed["headers"]["id"]
    tag = parsed["properties"]["delivery_tag"]
    assert task_id != tag
    return entry.replace(task_id, "TASK-ID").replace(tag, "DELIVERY-TAG")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_wire_writes_kombus_bytes_to_kombus_list(
    private_redis: PrivateRedis, variant: str
) -> None:
    w = Wire(private_redis.url, **VARIANTS[variant])
    messages = [(NAME, k) for k in KWARGS] + [("examination.resume_pre_review", KWARGS[0])]
    kombu_keys, kombu = w.by_kombu(messages)
    ids = w.push(messages)
    wire_keys, wire = w.raw()
    assert wire_keys == kombu_keys and len(kombu_keys) == 1
    assert len(kombu) == len(wire) == len(messages)
    for ours, theirs in zip(wire, kombu, strict=True):
        assert _named(ours) == _named(theirs)
    assert [json.loads(e)["headers"]["id"] for e in wire] == ids
    assert len({json.loads(e)["properties"]["delivery_tag"] for e in wire} | set(ids)) == 10


def test_percent_signs_anywhere_are_written_as_kombu_writes_them(
    private_redis: PrivateRedis,
) -> None:
    """The wire's envelope is a ``%`` format: a ``%`` in the queue's name, a task's name
    or the arguments is text, never a gap."""
    w = Wire(private_redis.url)
    w.queue += "-100%-%s-%(x)s"
    percent = {"application": "A-%s", "office": "%(office)s", "missing": ["100%", "%%"]}
    messages = [(NAME + ".100%", percent), ("exam.%s%(x)s%%", KWARGS[0]), (NAME, percent)]
    _, kombu = w.by_kombu(messages)
    w.push(messages)
    _, wire = w.raw()
    assert len(wire) == len(messages)
    assert [_named(e) for e in wire] == [_named(e) for e in kombu]


def test_a_json_serializer_registered_anew_is_the_one_the_wire_uses(
    private_redis: PrivateRedis,
) -> None:
    def sorted_json(obj: Any) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    serialization.register("json", sorted_json, kombu_json.loads, "application/json")
    try:
        w = Wire(private_redis.url)
        messages = [(NAME, k) for k in KWARGS[:3]]
        _, kombu = w.by_kombu(messages)
        w.push(messages)
        _, wire = w.raw()
        assert [_named(e) for e in wire] == [_named(e) for e in kombu]
        body = json.loads(base64.b64decode(json.loads(wire[0])["body"]))
        assert list(body[1]) == sorted(KWARGS[0])  # the registered encoder wrote it
        assert w.stdlib_first() is False
    finally:
        serialization.register_json()
    assert Wire(private_redis.url).stdlib_first() is True  # kombu's own JSON again


@pytest.mark.parametrize("variant", ["defaults", "priority steps"])
def test_a_kombu_consumer_reads_the_wires_messages_in_order(
    private_redis: PrivateRedis, variant: str
) -> None:
    w = Wire(private_redis.url, **VARIANTS[variant])
    n = 2 * LPUSH_MAX + 7  # three LPUSH commands in one round trip
    ids = w.push([(NAME, {"application": f"A-{i}", "office": "O1"}) for i in range(n)])
    got: list[tuple[str, Any]] = []
    with w.app.connection_for_read() as conn:
        queue = conn.SimpleQueue(w.queue, serializer="json")
        for _ in range(n):
            message = queue.get(timeout=5)
            got.append((message.headers["id"], message.decode()))
            message.ack()
        queue.close()
    assert [task_id for task_id, _ in got] == ids
    assert [body[1]["application"] for _, body in got] == [f"A-{i}" for i in range(n)]
    assert all(body[0] == [] and body[2]["chain"] is None for _, body in got)


def test_a_failed_write_raises_and_the_gateway_counts_none_handed(
    private_redis: PrivateRedis,
) -> None:
    w = Wire(private_redis.url)
    with w.app.connection_for_write() as conn:
        conn.default_channel.client.set(w.queue, "not a list")  # WRONGTYPE for LPUSH
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        w.push([(NAME, KWARGS[0])])
    gateway = CeleryExaminationGateway(w.app, replace(Settings(), examination_queue=w.queue))
    outcome = PendingOutcome(
        id=1, chain_id="c1", idempotency_key="c1:auto_corrected", application="A-1",
        office="O1", outcome=Outcome.AUTO_CORRECTED, missing=("safety",),
        decided_at=datetime(2026, 11, 30, 8, 30, tzinfo=UTC), send_count=0,
    )  # fmt: skip
    with pytest.raises(DeliveryFailed) as failed:
        gateway.deliver([outcome])
    assert failed.value.handed == 0
    with w.app.connection_for_write() as conn:
        assert conn.default_channel.client.get(w.queue) == b"not a list"  # nothing else


REFUSED: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # why: (app settings, queue options)
    "signed or pickled messages": ({"task_serializer": "pickle"}, {}),
    "compressed messages": ({"task_compression": "zlib"}, {}),
    "an expiring queue": ({}, {"expires": 60.0}),
    "a queue expiring by its arguments": ({}, {"queue_arguments": {"x-expires": 60000}}),
    "another body encoding": ({"broker_transport_options": {"body_encoding": "utf-8"}}, {}),
    "a global key prefix": ({"broker_transport_options": {"global_keyprefix": "rp_"}}, {}),
}


@pytest.mark.parametrize("why", list(REFUSED))
def test_the_wire_leaves_to_kombu_what_kombu_would_write_otherwise(
    private_redis: PrivateRedis, why: str
) -> None:
    conf, options = REFUSED[why]
    w = Wire(private_redis.url, **conf)
    w.app.conf.task_queues = (Queue(w.queue, **options),)  # type: ignore[no-untyped-call]
    with w.app.producer_or_acquire() as producer:
        assert wire_for(w.app, producer, w.app.amqp.queues[w.queue]) is None, why
    plain = Wire(private_redis.url)
    with plain.app.producer_or_acquire() as producer:
        assert wire_for(plain.app, producer, plain.app.amqp.queues[plain.queue]) is not None


def test_the_wire_is_for_kombus_own_redis_channel_only() -> None:
    class Rerouting(RedisChannel):  # a channel that writes its own way
        def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
            raise AssertionError("not reached")

    assert kombu_writes_as_the_wire(object.__new__(Rerouting)) is False
    assert kombu_writes_as_the_wire(object.__new__(SentinelChannel)) is True
    app = Celery("wire-other", broker="memory://", set_as_current=False)
    with app.producer_or_acquire() as producer:
        assert wire_for(app, producer, app.amqp.queues["memory-queue"]) is None


def test_ids_are_random_version_4_uuids() -> None:
    ids = uuid4_strings(5000)
    assert len(set(ids)) == 5000
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert uuid4_strings(0) == []
