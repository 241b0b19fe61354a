"""Issue 11: one slot's work split across several real worker processes on PostgreSQL.

Three Celery workers with different node names consume one queue (on Redis, then on
RabbitMQ); one slot message
is sent for thousands of due chains. Every chain is decided exactly once (one
attempt line at that slot, one step forward) and more than one worker decided chains
(the node name on each history line says who).

The helpers (seeding, the workers, waiting until the slot's messages have all run,
the checks) are shared with ``test_slot_split_kill.py``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import ChannelError
from celery import Celery
from sqlalchemy import Engine, func, insert, select

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import ChainRow, HistoryRow
from retry_pipeline.calendar import parse_instant
from retry_pipeline.clock import FileClock
from retry_pipeline.service.slots import BATCH
from tests.support import Started, pipeline_env, start_celery_worker, stop_processes

pytestmark = pytest.mark.postgres

SLOT = parse_instant("2026-11-27T10:00:00+09:00")
QUEUE = "split"
CHAINS = 12 * BATCH
WORKERS = 3
DEADLINE_S = 240
STOP_S = 30.0


def _seed(engine: Engine, n: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {"chain_id": uuid.uuid4().hex, "application": f"SPLIT-{i}", "office": "B1",
         "procedure": "continuous", "vehicle": f"V-SPLIT-{i}", "insurer_id": None,
         "insurance_no": None, "missing": ["safety"], "found": [], "confirmed": [],
         "detected_at": SLOT - timedelta(minutes=7), "attempts_made": 0, "phase": "same_day",
         "phase_used": 0, "next_slot": SLOT, "dispatched_for": None, "version": 1,
         "created_at": now, "updated_at": now}
        for i in range(n)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(ChainRow), rows)


def start_workers(
    pg_url: str, broker_url: str, tmp_path: Path, count: int = WORKERS, **settings: str
) -> list[Started]:
    """``count`` prefork workers (concurrency 1, node names ``split<i>-…@test``) on
    ``QUEUE``, the clock at ``SLOT``; ``settings`` are more ``RETRY_PIPELINE_*``."""
    clock = tmp_path / "clock.json"
    FileClock.write(clock, SLOT, 1.0)
    env = pipeline_env(
        database_url=pg_url,
        broker_url=broker_url,
        clock_file=str(clock),
        queue=QUEUE,
        **settings,
    )
    procs: list[Started] = []
    try:
        for i in range(count):
            name = f"split{i}-{uuid.uuid4().hex[:6]}@test"  # the log's stem: Started.name
            procs.append(
                start_celery_worker(
                    QUEUE,
                    name,
                    env,
                    tmp_path / f"{name}.log",
                    pool="prefork",
                    concurrency=1,
                    loglevel="WARNING",
                )
            )
    except BaseException:
        stop_processes(procs, STOP_S)
        raise
    return procs


@pytest.fixture
def workers(pg_url: str, any_broker: str, tmp_path: Path) -> Iterator[list[str]]:
    procs = start_workers(pg_url, any_broker, tmp_path)
    try:
        yield [p.name for p in procs]
    finally:
        stop_processes(procs, STOP_S)


def _client(broker_url: str) -> Celery:
    app = Celery("split-client", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


def _queued(client: Celery) -> int:
    """Messages waiting in the queue (Redis drops an empty queue: then none)."""
    with client.connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_declare(QUEUE, passive=True).message_count)
        except ChannelError:
            return 0


def _of_slot(kwargs: Any) -> bool:
    return isinstance(kwargs, dict) and kwargs.get("slot") == SLOT.isoformat()


def _unacked(client: Celery) -> int:
    """Redis: messages for ``SLOT`` taken by some worker and not acknowledged yet (kombu's
    ``unacked`` hash: running, held for their ETA, or left by a worker that died; not
    the next slot's, which wait for their ETA). RabbitMQ requeues a dead consumer's
    messages itself: 0."""
    with client.connection_for_write() as conn:
        channel = conn.default_channel
        key = getattr(channel, "unacked_key", None)
        if key is None:
            return 0
        # Each entry is [message, exchange, routing key] (kombu.transport.redis.QoS); the
        # body of a task message is [args, kwargs, embed] (Base64 JSON).
        bodies = [json.loads(raw)[0] for raw in channel.client.hvals(key)]
        return sum(_of_slot(json.loads(base64.b64decode(b["body"]))[1]) for b in bodies)


def wait_for_workers(client: Celery, count: int, deadline: float) -> None:
    while len(client.control.ping(timeout=0.5)) < count:
        assert time.monotonic() < deadline, "workers did not start"


def send_slot(client: Celery) -> None:
    """The slot's one message, as the grid tick sends it."""
    client.send_task("retry_pipeline.attempt_slot", kwargs={"slot": SLOT.isoformat()}, queue=QUEUE)


def undecided(engine: Engine) -> int:
    """Chains still due at ``SLOT`` (as committed)."""
    with engine.connect() as conn:
        stmt = select(func.count()).select_from(ChainRow).where(ChainRow.next_slot == SLOT)
        return int(conn.scalar(stmt) or 0)


def wait_until_settled(client: Celery, deadline: float) -> None:
    """Every message for ``SLOT`` has run: none queued, none taken and not acknowledged
    (Redis), none running, reserved or waiting for its ETA in a worker."""
    while True:
        if _queued(client) == 0 and _unacked(client) == 0:
            inspect = client.control.inspect(timeout=1.0)
            found = [inspect.active(), inspect.reserved(), inspect.scheduled()]
            tasks = [t for by_node in found for ts in (by_node or {}).values() for t in ts]
            if not any(_of_slot(t.get("request", t).get("kwargs")) for t in tasks):
                return
        assert time.monotonic() < deadline, "messages of the slot still running"
        time.sleep(0.1)


def assert_decided_once(engine: Engine, chains: int) -> dict[str, set[str]]:
    """Each of the ``chains`` has one attempt line at ``SLOT`` and attempts_made 1;
    the chains each node decided."""
    with engine.connect() as conn:
        lines = conn.execute(
            select(HistoryRow.chain_id, HistoryRow.node).where(
                HistoryRow.slot == SLOT, HistoryRow.event == "attempt"
            )
        ).all()
        rows = conn.execute(select(ChainRow.chain_id, ChainRow.attempts_made)).all()
    per_chain: dict[str, int] = {}
    by_node: dict[str, set[str]] = {}
    for chain_id, node in lines:
        per_chain[chain_id] = per_chain.get(chain_id, 0) + 1
        by_node.setdefault(node, set()).add(chain_id)
    assert len(rows) == chains
    left = {c for c, _ in rows} - set(per_chain)
    assert not left, f"{len(left)} chain(s) left behind"
    twice = {c: n for c, n in per_chain.items() if n > 1}
    assert not twice, f"{len(twice)} chain(s) decided more than once"
    assert {made for _, made in rows} == {1}
    return by_node


def test_one_slot_is_decided_once_per_chain_by_several_workers(
    pg_url: str, any_broker: str, workers: list[str]
) -> None:
    engine = make_engine(pg_url)
    _seed(engine, CHAINS)
    client = _client(any_broker)
    deadline = time.monotonic() + DEADLINE_S
    wait_for_workers(client, WORKERS, deadline)
    send_slot(client)
    while (left := undecided(engine)) > 0:
        assert time.monotonic() < deadline, f"only {CHAINS - left} of {CHAINS} chains decided"
        time.sleep(0.1)
    # Let every message still in flight run: none may decide a chain a second time.
    wait_until_settled(client, deadline)
    by_node = assert_decided_once(engine, CHAINS)
    engine.dispose()
    assert set(by_node) <= set(workers)
    assert len(by_node) > 1, f"only {set(by_node)} decided chains of the slot"
