"""Issue 11: one slot's work split across several real worker processes on PostgreSQL.

Three Celery workers with different node names consume one queue (on Redis, then on
RabbitMQ); one slot message
is sent for thousands of due chains. Every chain is decided exactly once (one
attempt line at that slot, one step forward) and more than one worker decided chains
(the node name on each history line says who).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from amqp.exceptions import ChannelError
from celery import Celery
from sqlalchemy import Engine, func, insert, select

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import ChainRow, HistoryRow
from retry_pipeline.calendar import parse_instant
from retry_pipeline.clock import FileClock
from retry_pipeline.service.slots import BATCH
from tests.support import pipeline_env, start_celery_worker, stop_processes

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


@pytest.fixture
def workers(pg_url: str, any_broker: str, tmp_path: Path) -> Iterator[list[str]]:
    clock = tmp_path / "clock.json"
    FileClock.write(clock, SLOT, 1.0)
    env = pipeline_env(
        database_url=pg_url, broker_url=any_broker, clock_file=str(clock), queue=QUEUE
    )
    names = [f"split{i}-{uuid.uuid4().hex[:6]}@test" for i in range(WORKERS)]
    procs = [
        start_celery_worker(
            QUEUE,
            name,
            env,
            tmp_path / f"{name}.log",
            pool="prefork",
            concurrency=1,
            loglevel="WARNING",
        )
        for name in names
    ]
    try:
        yield names
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


def test_one_slot_is_decided_once_per_chain_by_several_workers(
    pg_url: str, any_broker: str, workers: list[str]
) -> None:
    engine = make_engine(pg_url)
    _seed(engine, CHAINS)
    client = _client(any_broker)
    deadline = time.monotonic() + DEADLINE_S
    while len(client.control.ping(timeout=0.5)) < WORKERS:
        assert time.monotonic() < deadline, "workers did not start"
    client.send_task("retry_pipeline.attempt_slot", kwargs={"slot": SLOT.isoformat()}, queue=QUEUE)

    def decided() -> int:
        with engine.connect() as conn:
            stmt = select(func.count()).select_from(ChainRow).where(ChainRow.next_slot > SLOT)
            return int(conn.scalar(stmt) or 0)

    while decided() < CHAINS:
        assert time.monotonic() < deadline, f"only {decided()} of {CHAINS} chains decided"
        time.sleep(0.1)
    # Let every message still in flight run: none may decide a chain a second time.
    while True:
        stats = client.control.inspect(timeout=1.0).active() or {}
        queued = _queued(client)
        if queued == 0 and not any(stats.values()):
            break
        assert time.monotonic() < deadline, "messages of the slot still running"
        time.sleep(0.1)

    with engine.connect() as conn:
        lines = conn.execute(
            select(HistoryRow.chain_id, HistoryRow.node).where(
                HistoryRow.slot == SLOT, HistoryRow.event == "attempt"
            )
        ).all()
        chains = conn.execute(select(ChainRow.chain_id, ChainRow.attempts_made)).all()
    engine.dispose()
    per_chain: dict[str, int] = {}
    for chain_id, _ in lines:
        per_chain[chain_id] = per_chain.get(chain_id, 0) + 1
    assert len(chains) == CHAINS
    assert {c for c, _ in chains} == set(per_chain), "a chain was left behind"
    assert set(per_chain.values()) == {1}, "a chain was decided twice"
    assert {made for _, made in chains} == {1}
    nodes = {node for _, node in lines}
    assert nodes <= set(workers)
    assert len(nodes) > 1, f"only {nodes} decided chains of the slot"
