"""Outcomes handed to the examination side in one batch, on Redis and on RabbitMQ.

``CeleryExaminationGateway.deliver`` publishes one ordinary Celery task message per
outcome (the examination side's contract, DESIGN 5) through one producer; on Redis
they are written in one round trip (``RedisTaskWire``: kombu's bytes, many to an LPUSH),
on RabbitMQ kombu publishes each. What the examination worker receives is read back
here with kombu, as a worker would.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Consumer, Queue

from retry_pipeline.adapters.celery_io import CeleryExaminationGateway, outcome_message
from retry_pipeline.adapters.redis_wire import wire_for
from retry_pipeline.config import Settings
from retry_pipeline.errors import DeliveryFailed
from retry_pipeline.model import Outcome, PendingOutcome
from tests.fakes import TOKYO

pytestmark = pytest.mark.e2e


def _outcomes(n: int) -> list[PendingOutcome]:
    return [
        PendingOutcome(
            id=i, chain_id=f"c{i}", idempotency_key=f"c{i}:{o.value}", application=f"D-{i}",
            office="O1", outcome=o, missing=() if o is Outcome.RESUMED else ("safety",),
            decided_at=datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO), send_count=0,
        )
        for i, o in ((i, (Outcome.RESUMED, Outcome.AUTO_CORRECTED)[i % 2]) for i in range(n))
    ]  # fmt: skip


def _gateway(broker: str) -> tuple[CeleryExaminationGateway, str]:
    queue = f"exam-{uuid.uuid4().hex[:8]}"
    app = Celery("delivery-test", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], broker_connection_timeout=2,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
    )  # fmt: skip
    return CeleryExaminationGateway(app, replace(Settings(), examination_queue=queue)), queue


def _received(broker: str, queue: str, expected: int) -> list[tuple[dict[str, Any], Any]]:
    got: list[tuple[dict[str, Any], Any]] = []
    with Connection(broker) as conn:
        consumer = Consumer(
            conn, [Queue(queue, routing_key=queue)], accept=["json"],
            callbacks=[lambda body, message: (got.append((message.headers, body)), message.ack())],
        )  # fmt: skip
        with consumer:
            while len(got) < expected:
                conn.drain_events(timeout=10)
        with pytest.raises(TimeoutError):  # and nothing more
            conn.drain_events(timeout=0.5)
    return got


def test_every_outcome_is_one_examination_task_in_order(any_broker: str) -> None:
    gateway, queue = _gateway(any_broker)
    outcomes = _outcomes(250)
    gateway.deliver(outcomes)
    got = _received(any_broker, queue, len(outcomes))
    assert [h["task"] for h, _ in got] == [
        "examination.resume_pre_review" if o.outcome is Outcome.RESUMED
        else "examination.auto_correct"
        for o in outcomes
    ]  # fmt: skip
    # protocol 2 bodies: (args, kwargs, embed); the kwargs are the contract's JSON
    assert [body[1] for _, body in got] == [outcome_message(o) for o in outcomes]
    assert all(body[0] == [] for _, body in got)
    assert len({h["id"] for h, _ in got}) == len(outcomes)  # one task id each
    first = got[0][0]
    assert first["kwargsrepr"].startswith("{'application': 'D-0'")


def test_redis_takes_the_wire_and_rabbitmq_publishes_one_by_one(any_broker: str) -> None:
    gateway, queue = _gateway(any_broker)
    on_redis = any_broker.startswith("redis")
    with gateway.app.producer_or_acquire() as producer:
        assert producer.supports_batch_publish is on_redis
        wire = wire_for(gateway.app, producer, gateway.app.amqp.queues[queue])
        assert (wire is not None) is on_redis


def test_a_broker_that_cannot_be_reached_raises_delivery_failed() -> None:
    gateway, _queue = _gateway("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(DeliveryFailed) as failed:
        gateway.deliver(_outcomes(3))
    assert failed.value.handed == 0
    assert failed.value.__cause__ is not None


def test_nothing_to_deliver_sends_nothing(any_broker: str) -> None:
    gateway, queue = _gateway(any_broker)
    gateway.deliver([])
    gateway.deliver(_outcomes(1))
    assert len(_received(any_broker, queue, 1)) == 1
