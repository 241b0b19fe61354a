"""Issue 11: no chain is left behind when a worker dies mid-batch of a split slot.

As in ``test_slot_split.py``: thousands of chains due at one slot on PostgreSQL, three
prefork workers (concurrency 1, different node names), one ``attempt_slot`` message,
on each broker. Once every chain still due is held by a batch in flight (no row left
for a message still to come), the pool child of a worker that has already decided a
batch, in the batch begun last, is frozen (SIGSTOP) and checked to be inside that
batch's transaction and not committing it (its session in ``pg_stat_activity``, found
through its client port, holds the rows: ``xmax``); then SIGKILLed: either the pool
child alone (its main process lives on and forks a new one) or the whole node (main
process and child). Its transaction must end ``aborted``. The batch begun last is
often caught between its claim and its share (``slots._share``): then no other
message of the slot will ever see those chains.

Every chain is then decided exactly once (one ``attempt`` line at the slot each,
``attempts_made`` 1, checked after every message of the slot has run); a killed
node decided none of the killed batch.

What recovers the killed batch:

1. PostgreSQL rolls the killed transaction back when the connection drops with the
   process: nothing of the batch is committed and its row locks go.
2. The killed message comes back (``task_acks_late``). Pool child killed: the main
   process gets ``WorkerLostError`` and, with ``task_reject_on_worker_lost``, rejects
   it with requeue (both brokers, at once). Whole node killed: RabbitMQ requeues its
   unacknowledged message when the connection drops; Redis restores it from kombu's
   ``unacked`` hash once the visibility timeout has passed (``VISIBILITY_TIMEOUT_S``,
   shortened here to ``VISIBILITY_S``; an hour by default).
3. Backing 2 up when the batch had shared: a later message of the slot that found the
   rows held retries after a short back-off (``_wait_in_slot`` on ``held``). The grid
   tick (``dispatch_due`` re-sends a slot a step overdue) is the last resort, not
   reached here: the clock stays within the slot and no beat runs.

Checked by breaking them (then restored): ``task_reject_on_worker_lost = False`` left
500 chains behind in 4 of 6 pool-child runs, 4 of 4 with the held retry also cut;
``task_acks_late = False`` with the held retry cut, 4 of 4 node runs; the default
visibility timeout with the held retry cut, the Redis node run (RabbitMQ passes).

None is decided twice: a chain is decided only by the transaction holding its row
lock (``claim``: ``FOR UPDATE SKIP LOCKED`` at ``next_slot`` = the slot), which moves
``next_slot`` on and writes the attempt line in the same commit. A killed batch commits
nothing; a row decided since no longer matches a later claim (PostgreSQL re-checks it
as committed), so redelivered, retried and shared messages find only what is still
due. (A claim without the lock decided 5,500 chains more than once.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.engine import make_url

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import ChainRow, HistoryRow
from retry_pipeline.service.slots import BATCH
from tests.e2e.test_slot_split import (
    CHAINS,
    SLOT,
    STOP_S,
    WORKERS,
    _client,
    _seed,
    assert_decided_once,
    send_slot,
    start_workers,
    undecided,
    wait_for_workers,
    wait_until_settled,
)
from tests.support import Started, stop_processes

pytestmark = pytest.mark.postgres

DEADLINE_S = 90.0
VISIBILITY_S = 6  # Redis: a dead node's unacknowledged message is restored after this
POLL_S = 0.002  # the moment to kill lasts about one batch (under 0.1 s here)
SETTLE_S = 0.02  # after SIGSTOP: what the child sent before reaches the server

CHAINS_TABLE = ChainRow.__tablename__
# The chains still due at the slot, and how many of them no batch holds (``xmax``: the
# transaction that locked the row; 0: nobody did).
DUE = text(
    f"SELECT count(*), count(*) FILTER (WHERE xmax::text = '0') FROM {CHAINS_TABLE}"
    " WHERE next_slot = :slot"
)
# The batches in flight, the one begun last first: the client port and transaction of
# each session holding rows still due, and the chains it holds.
HOLDERS = text(
    f"SELECT a.client_port, a.backend_xid::text, array_agg(c.chain_id) FROM {CHAINS_TABLE} c"
    " JOIN pg_stat_activity a ON c.xmax::text = a.backend_xid::text"
    " WHERE c.next_slot = :slot AND a.datname = current_database()"
    " GROUP BY a.client_port, a.backend_xid, a.xact_start ORDER BY a.xact_start DESC"
)
SESSION = text(
    "SELECT backend_xid::text, query FROM pg_stat_activity"
    " WHERE datname = current_database() AND client_port = :port"
)
# A 32-bit xid as a full xid8, with the epoch of now (the batch began moments ago).
STATUS = text(
    "SELECT pg_xact_status((((pg_snapshot_xmax(pg_current_snapshot())::text::bigint >> 32)"
    " << 32) | CAST(:xid AS bigint))::text::xid8)"
)


@dataclass
class Holding:
    """A worker's pool child inside a batch's transaction, and the chains it claimed."""

    worker: Started
    child: int
    port: int
    xid: str
    chains: set[str]


class PoolChildren:
    """Which worker's pool child owns the database connection from a client port."""

    def __init__(self, workers: list[Started], db_port: int) -> None:
        self.workers = workers
        self.db_port = db_port
        self.known: dict[int, tuple[Started, int]] = {}

    def at(self, port: int) -> tuple[Started, int] | None:
        if port not in self.known:  # a connection opened since: look again
            self.scan()
        return self.known.get(port)

    def scan(self) -> None:
        self.known = dict(self._connections())

    def seen(self) -> int:
        """How many workers' pool children have a database connection known."""
        return len({worker.name for worker, _ in self.known.values()})

    def _connections(self) -> Iterator[tuple[int, tuple[Started, int]]]:
        for worker in self.workers:
            if not worker.alive():
                continue
            for child in psutil.Process(worker.process.pid).children():
                try:
                    connections = child.net_connections(kind="tcp")
                except psutil.NoSuchProcess:
                    continue
                for c in connections:
                    if c.raddr and c.raddr.port == self.db_port:
                        yield c.laddr.port, (worker, child.pid)


def _frozen_mid_batch(conn: Connection, holding: Holding) -> bool:
    """SIGSTOP the pool child; True if its session is still in the batch's transaction and
    not committing it (the server waits for the child, or runs one of the batch's
    statements and then waits): it cannot commit now. Else (it committed first) SIGCONT."""
    os.kill(holding.child, signal.SIGSTOP)
    time.sleep(SETTLE_S)
    session = conn.execute(SESSION, {"port": holding.port}).one_or_none()
    if (
        session is not None
        and session.backend_xid == holding.xid
        and session.query.strip().upper() not in ("COMMIT", "ROLLBACK")
    ):
        return True
    os.kill(holding.child, signal.SIGCONT)
    return False


def _catch_batch(conn: Connection, children: PoolChildren, deadline: float) -> Holding:
    """A pool child frozen inside a batch, caught when every chain still due is held by a
    batch in flight, of a worker that has already decided a batch of the slot."""
    deciders: set[str] = set()
    while True:
        due, free = conn.execute(DUE, {"slot": SLOT}).one()
        assert due, "the slot was decided before a batch could be killed"
        assert time.monotonic() < deadline, "no batch to kill"
        if free and children.seen() < WORKERS:
            children.scan()  # learn the ports early: the moment to kill is short
        if not free:
            for port, xid, chains in conn.execute(HOLDERS, {"slot": SLOT}):
                found = children.at(port)
                if found is None:
                    continue
                worker, child = found
                if worker.name not in deciders:
                    stmt = select(HistoryRow.node).where(HistoryRow.slot == SLOT).distinct()
                    deciders.update(conn.scalars(stmt))
                holding = Holding(worker, child, port, xid, set(chains))
                if worker.name in deciders and _frozen_mid_batch(conn, holding):
                    return holding
        time.sleep(POLL_S)


def _status(conn: Connection, xid: str) -> str:
    return str(conn.scalar(STATUS, {"xid": int(xid)}))


def _kill(victim: str, holding: Holding) -> None:
    if victim == "pool-child":
        os.kill(holding.child, signal.SIGKILL)
    else:  # the node: the worker's process group (main process and pool child)
        os.killpg(holding.worker.process.pid, signal.SIGKILL)
        holding.worker.process.wait(timeout=STOP_S)


@pytest.mark.parametrize("victim", ["pool-child", "node"])
def test_a_batch_killed_mid_slot_is_decided_again_once(
    pg_url: str, any_broker: str, tmp_path: Path, victim: str
) -> None:
    settings = {"visibility_timeout_s": str(VISIBILITY_S)} if victim == "node" else {}
    workers = start_workers(pg_url, any_broker, tmp_path, **settings)
    engine = make_engine(pg_url)
    try:
        _seed(engine, CHAINS)
        client = _client(any_broker)
        deadline = time.monotonic() + DEADLINE_S
        wait_for_workers(client, WORKERS, deadline)
        children = PoolChildren(workers, make_url(pg_url).port or 5432)
        # Autocommit: each statement sees pg_stat_activity and the rows as they are now.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            send_slot(client)
            holding = _catch_batch(conn, children, deadline)
            _kill(victim, holding)
            while (status := _status(conn, holding.xid)) == "in progress":
                assert time.monotonic() < deadline, "the killed batch is still open"
                time.sleep(POLL_S)
        assert status == "aborted", f"the killed batch's transaction {status}"
        assert len(holding.chains) == BATCH  # a whole batch, rolled back

        while (left := undecided(engine)) > 0:
            assert time.monotonic() < deadline, f"{left} of {CHAINS} chains left behind"
            time.sleep(0.1)
        # Every message of the slot (the killed one too) has run: none decided twice.
        wait_until_settled(client, deadline)
        by_node = assert_decided_once(engine, CHAINS)
        if victim == "node":  # decided again by the workers still alive
            assert not holding.chains & by_node.get(holding.worker.name, set())
    finally:
        engine.dispose()
        stop_processes(workers, STOP_S)
