"""Issue 12, finding 5: timeouts on every connection; a stuck row never stalls a slot (PostgreSQL).

A session idle in a transaction holds one chain's row lock (``SELECT ... FOR UPDATE``):
the grid tick, the slot's batch and an early close still finish, the other chains are
decided at their slot, and the stuck one is decided once the lock goes. The engine sets
``lock_timeout``, ``statement_timeout`` and ``idle_in_transaction_session_timeout``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import OperationalError

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.bootstrap import bootstrap
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.messages import parse_report
from retry_pipeline.model import PendingOutcome
from retry_pipeline.service.pipeline import Pipeline
from tests.conftest import create_registry_standin_at

pytestmark = pytest.mark.postgres

DETECTED = datetime(2026, 12, 1, 1, 5, tzinfo=UTC)  # Tue 10:05 Japan time
CHAINS = 20
DEADLINE_S = 60.0  # a bound for a hang, far above the lock timeout
R = TypeVar("R")


@dataclass
class Recorder:
    slots: list[datetime] = field(default_factory=list)
    outcomes: list[PendingOutcome] = field(default_factory=list)

    def send_slot(self, slot: datetime) -> None:
        self.slots.append(slot)

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        self.outcomes.extend(outcomes)


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    engine = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(postgres_server_url)
    create_registry_standin_at(postgres_server_url)  # Kei-MOTAS is external: stand in
    return postgres_server_url


@pytest.fixture
def pipeline(pg_url: str) -> Iterator[tuple[Pipeline, FixedClock, Recorder]]:
    clock = FixedClock(DETECTED + timedelta(minutes=1))
    recorder = Recorder()
    settings = Settings(database_url=pg_url, db_lock_timeout_ms=1000)
    p = bootstrap(settings, None, clock=clock, dispatcher=recorder, gateway=recorder)
    yield p, clock, recorder
    p.store.engine.dispose()  # type: ignore[attr-defined]


def report(n: int) -> Any:
    return parse_report(
        {
            "application": f"OSS-2026-{n:06d}",
            "office": "OSK01",
            "procedure": "continuous",
            "vehicle": f"JA11-{n:06d}",
            "missing": ["safety"],
            "confirmed": [],
            "detected_at": DETECTED.isoformat(),
        }
    )


def within_deadline(action: Callable[[], R], what: str) -> R:
    """Run ``action`` in a thread; fail (instead of hanging) if it has not returned in time."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = action()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE_S)
    if worker.is_alive():
        pytest.fail(f"{what} still blocked after {DEADLINE_S} s (a stuck row stalled it)")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def hold_row_lock(url: str, chain_id: str) -> tuple[Any, Connection]:
    """Another session, idle in a transaction, holding one chain's row lock."""
    engine = create_engine(url)
    conn = engine.connect()
    conn.execute(text("BEGIN"))
    conn.execute(text("SELECT 1 FROM retry_chain WHERE chain_id = :c FOR UPDATE"), {"c": chain_id})
    return engine, conn


def attempts_of(p: Pipeline, slot: datetime) -> set[str]:
    with p.store.unit() as u:
        return {h.chain_id for h in u.history.lines() if h.event == "attempt" and h.slot == slot}


def test_a_stuck_row_costs_its_chain_a_retry_never_the_slot(
    pipeline: tuple[Pipeline, FixedClock, Recorder], pg_url: str
) -> None:
    p, clock, recorder = pipeline
    accepted = p.accept_reports([report(n) for n in range(CHAINS)])
    ids = [a.chain_id for a in accepted]  # type: ignore[union-attr]
    with p.store.unit() as u:
        slot = u.chains.get(ids[0]).cursor.slot  # type: ignore[union-attr]
    stuck = ids[0]
    engine, holder = hold_row_lock(pg_url, stuck)
    try:
        # Its message was lost: past a step, the tick sends the slot again.
        clock.current = slot + timedelta(minutes=11)
        recorder.slots.clear()
        tick = within_deadline(p.tick, "the grid tick")
        assert slot in recorder.slots, "the tick did not send the slot"
        # The set-based tick marks what it can lock (SKIP LOCKED): all but the held row.
        assert {d.chain_id for d in tick.dispatched} == set(ids) - {stuck}
        within_deadline(lambda: p.run_slot(slot), "the slot's batch")
        decided = attempts_of(p, slot)
        assert decided == set(ids) - {stuck}, "the other chains were not decided at their slot"
        # An early close (10:15) parks every chain slotted after it; one of them is held.
        held = ids[1]
        engine2, holder2 = hold_row_lock(pg_url, held)
        try:
            close_at = slot + timedelta(minutes=5)
            parked = within_deadline(lambda: p.record_close(close_at), "the close")
            assert parked == CHAINS - 2, "all but the held chain (and the stuck one) parked"
        finally:
            holder2.rollback()
            holder2.close()
            engine2.dispose()
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    # The locks are gone: the next tick parks the held chain and sends the stuck one's slot.
    recorder.slots.clear()
    after = within_deadline(p.tick, "the grid tick after the locks")
    assert after.parked == 1
    assert parked_chains(p) == set(ids) - {stuck}
    assert slot in recorder.slots
    within_deadline(lambda: p.run_slot(slot), "the slot again")
    assert stuck in attempts_of(p, slot)


def parked_chains(p: Pipeline) -> set[str]:
    with p.store.unit() as u:
        return {h.chain_id for h in u.history.lines() if h.event == "parked"}


def test_the_engine_sets_the_session_timeouts(pg_url: str) -> None:
    settings = Settings(
        database_url=pg_url,
        db_lock_timeout_ms=1500,
        db_statement_timeout_ms=2500,
        db_idle_in_transaction_timeout_ms=3500,
    )
    engine = make_engine(pg_url, settings=settings)
    try:
        with engine.connect() as conn:
            shown = {
                name: conn.execute(text(f"SHOW {name}")).scalar_one()
                for name in ("lock_timeout", "statement_timeout",
                             "idle_in_transaction_session_timeout")
            }  # fmt: skip
            # TCP keepalives are libpq's (client side): the connection's own parameters.
            params = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
        assert shown["lock_timeout"] == "1500ms"
        assert shown["statement_timeout"] == "2500ms"
        assert shown["idle_in_transaction_session_timeout"] == "3500ms"
        assert params["keepalives"] == "1"
        assert params["keepalives_idle"] == "30"
    finally:
        engine.dispose()
    defaults = make_engine(pg_url)  # RetryStore.from_url and the CLI: the defaults
    try:
        with defaults.connect() as conn:
            assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "5s"
            assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one()
    finally:
        defaults.dispose()


def test_a_statement_past_its_timeout_fails_instead_of_hanging(pg_url: str) -> None:
    engine = make_engine(pg_url, settings=Settings(db_statement_timeout_ms=300))
    try:
        with engine.connect() as conn, pytest.raises(OperationalError, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(30)"))
    finally:
        engine.dispose()


def test_a_session_idle_in_a_transaction_is_ended_by_the_server(pg_url: str) -> None:
    engine = make_engine(pg_url, settings=Settings(db_idle_in_transaction_timeout_ms=300))
    watcher = create_engine(pg_url)
    try:
        conn = engine.connect()
        conn.execute(text("BEGIN"))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        deadline = time.monotonic() + DEADLINE_S
        while True:
            with watcher.connect() as w:
                alive = w.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar_one()
            if not alive:
                break
            assert time.monotonic() < deadline, "the idle transaction was never ended"
            time.sleep(0.1)
        conn.invalidate()
        conn.close()
    finally:
        watcher.dispose()
        engine.dispose()
