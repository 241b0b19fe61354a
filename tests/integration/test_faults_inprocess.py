"""Real faults against the service layer: nothing lost, nothing doubled (issue 4).

The service is wired as ``bootstrap.py`` wires it (real store, real
``SqlCertificateRegistry``) with a ``FixedClock`` and in-memory fakes for the two
ports that leave the process: a ``Broker`` (Dispatcher) that keeps attempt
messages like a broker with ETAs, and a gateway that records every outcome. The
pipeline sends slot messages (``run_slot``: every chain due at a slot); one
chain's attempt message (``retry_pipeline.attempt``, as older senders send it) is
delivered too, as a worker would: it runs its slot.

The faults are real: a TCP proxy in front of PostgreSQL that refuses connections
and cuts live ones; child processes SIGKILLed between the outbox commit and the
send, and while an attempt's transaction is open; two workers delivering the
same attempt at the same instant; two beats; the same report twice.

After each fault the chain must end exactly once, with one outbox row, delivered
always under the same idempotency key, each attempt number once in history, and
the attempts on the slots R7–R13 give (DESIGN 1–5).

The child processes run this module: ``python -m tests.integration.test_faults_inprocess``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import select as sql_select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import OutboxRow
from retry_pipeline.adapters.registry import SqlCertificateRegistry, to_row
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.model import (
    Application,
    Certificate,
    CertificateKind,
    Chain,
    Dispatch,
    HistoryEntry,
    InsuranceCertificate,
    Outcome,
    PendingOutcome,
    PendingReceipt,
    Procedure,
    Report,
    SafetyCertificate,
)
from retry_pipeline.ports import CertificateRegistry
from retry_pipeline.service.pipeline import Pipeline
from tests.conftest import create_registry_standin_at

TOKYO = ZoneInfo("Asia/Tokyo")
ROOT = Path(__file__).resolve().parents[2]
CHILD_MODULE = "tests.integration.test_faults_inprocess"
SAFETY = CertificateKind.SAFETY
INSPECTED = date(2026, 11, 20)  # R2: safety certificate valid 2026-11-20 .. 2026-12-04
ENDINGS = (Outcome.RESUMED.value, Outcome.AUTO_CORRECTED.value)
WAIT_S = 20.0  # deadline for anything another thread or process has to do
CHILD_HOLD_S = 30.0  # a child holding a transaction open waits at most this long

pytestmark = pytest.mark.timeout(120)


def fri(hour: int, minute: int, second: int = 0) -> datetime:
    """Friday 2026-11-27 (a business day), Japan time."""
    return datetime(2026, 11, 27, hour, minute, second, tzinfo=TOKYO)


def mon(hour: int, minute: int, second: int = 0) -> datetime:
    """Monday 2026-11-30 (a business day), Japan time."""
    return datetime(2026, 11, 30, hour, minute, second, tzinfo=TOKYO)


# The notice's example (R9): missing at 08:36 -> six attempts, auto-correction at 09:30.
DETECTED = fri(8, 36)
GRID = [fri(8, 40), fri(8, 50), fri(9, 0), fri(9, 10), fri(9, 20), fri(9, 30)]


# -- fakes for the ports that leave the process ---------------------------------------


@dataclass(frozen=True)
class SlotMessage:
    """``retry_pipeline.attempt_slot``: the attempts of every chain due at ``slot``."""

    slot: datetime


Message = Dispatch | SlotMessage  # a chain's attempt, or a whole slot's


class Broker:
    """Dispatcher fake that keeps attempt messages until their ETA, like the broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queued: list[Message] = []
        self.sent_log: list[Message] = []  # every message ever sent, for late redelivery

    def send_slot(self, slot: datetime) -> None:
        self._send(SlotMessage(slot))

    def _send(self, message: Message) -> None:
        with self._lock:
            self.queued.append(message)
            self.sent_log.append(message)

    def take_due(self, now: datetime) -> list[Message]:
        """Messages whose ETA has come, removed from the queue (a worker took them)."""
        with self._lock:
            due = [m for m in self.queued if m.slot <= now]
            self.queued = [m for m in self.queued if m.slot > now]
        return due

    def take(self, slot: datetime) -> Message:
        """Take one queued message due at ``slot`` (a worker reserved it, or Redis lost it)."""
        with self._lock:
            for i, m in enumerate(self.queued):
                if m.slot == slot:
                    return self.queued.pop(i)
        raise AssertionError(f"no message queued for {slot}: {self.queued}")

    def count(self, slot: datetime) -> int:
        """Queued messages that would run the attempts due at ``slot``."""
        with self._lock:
            return sum(1 for m in self.queued if m.slot == slot)


class RecordingGateway:
    """ExaminationGateway fake: keeps every outcome handed over.

    ``then``, when set, runs once right after the next outcome is handed over (a fault).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivered: list[PendingOutcome] = []
        self.then: Callable[[], None] | None = None

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        with self._lock:
            self.delivered.extend(outcomes)
            then, self.then = self.then, None
        if then is not None:
            then()

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        """Receipts (DESIGN 11) are not what these faults are about."""

    def of(self, application: str) -> list[PendingOutcome]:
        with self._lock:
            return [d for d in self.delivered if d.application == application]


class RegistryWrapper:
    """A registry that forwards to the real one; subclasses add the fault."""

    def __init__(self, inner: CertificateRegistry) -> None:
        self.inner = inner

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        return self.inner.present_many(requests, as_of)


class SlowRegistry(RegistryWrapper):
    """Whose ``present_many()`` takes ``delay_s``: a slot's claim stays open that long."""

    def __init__(self, inner: CertificateRegistry, delay_s: float) -> None:
        super().__init__(inner)
        self.delay_s = delay_s
        self.entered = threading.Event()

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        self.entered.set()
        time.sleep(self.delay_s)
        return self.inner.present_many(requests, as_of)


# -- the database as it really is -------------------------------------------------------


class Truth:
    """Reads the database directly (not through the proxy), without write locks."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, write_lock=False)
        self.store = RetryStore(self.engine)

    def chain(self, chain_id: str) -> Chain | None:
        with self.store.unit() as u:
            return u.chains.get(chain_id)

    def live_of(self, application: str) -> Chain | None:
        with self.store.unit() as u:
            return u.chains.of_applications([application], lock=False).get(application)

    def history(self, application: str) -> list[HistoryEntry]:
        with self.store.unit() as u:
            return u.history.lines(application=application)

    def events(self, application: str) -> list[str]:
        return [h.event for h in self.history(application)]

    def attempt_numbers(self, application: str) -> list[int]:
        return [h.attempt_no for h in self.history(application) if h.attempt_no is not None]

    def outbox(self, application: str) -> list[OutboxRow]:
        with make_sessions(self.engine)() as session:
            stmt = sql_select(OutboxRow).where(OutboxRow.application == application)
            return list(session.scalars(stmt.order_by(OutboxRow.id)))

    def insert(self, *certs: Certificate) -> None:
        with make_sessions(self.engine)() as session, session.begin():
            session.add_all([to_row(c) for c in certs])


def assert_ended_once(
    truth: Truth,
    subject: Application,
    chain_id: str,
    outcome: Outcome,
    slots: list[datetime],
    deliveries: list[PendingOutcome],
) -> None:
    """The chain ended once, one outbox row, attempts 1..n once each on ``slots``."""
    key = f"{chain_id}:{outcome.value}"
    assert truth.chain(chain_id) is None, "the chain is still live"
    assert truth.live_of(subject.application) is None
    rows = [(r.chain_id, r.idempotency_key, r.outcome) for r in truth.outbox(subject.application)]
    assert rows == [(chain_id, key, outcome.value)], "one outbox row per chain (DESIGN 5)"
    history = truth.history(subject.application)
    endings = [(h.chain_id, h.event) for h in history if h.event in ENDINGS]
    assert endings == [(chain_id, outcome.value)], "one ending in history (R5)"
    attempts = [h for h in history if h.attempt_no is not None]
    numbers = [h.attempt_no for h in attempts]
    assert numbers == list(range(1, len(slots) + 1)), "attempt numbers repeat or skip"
    assert [h.slot for h in attempts] == slots, "attempts off their slots (R7-R13)"
    assert deliveries, "the outcome never reached the examination side"
    assert {d.idempotency_key for d in deliveries} == {key}
    assert {d.outcome for d in deliveries} == {outcome}


# -- the pipeline under test --------------------------------------------------------------


@dataclass
class World:
    """One or more services (workers/beats) over one database, one clock, one broker."""

    clock: FixedClock
    broker: Broker
    gateway: RecordingGateway
    services: list[Pipeline]
    truth: Truth
    engines: list[Engine] = field(default_factory=list)

    @property
    def service(self) -> Pipeline:
        return self.services[0]

    def at(self, instant: datetime) -> None:
        self.clock.current = instant

    def report(self, subject: Application, detected_at: datetime = DETECTED) -> str:
        """The pre-review reports SAFETY missing; returns the new chain's id."""
        self.at(detected_at + timedelta(seconds=5))
        accepted = self.service.accept_report(
            Report(subject, frozenset({SAFETY}), frozenset(), detected_at)
        )
        assert accepted.retry and accepted.created, accepted
        return accepted.chain_id

    def deliver(self, message: Message, worker: int = 0) -> Any:
        """A worker runs one message: a chain's attempt runs its slot, as the task does."""
        return self.services[worker % len(self.services)].run_slot(message.slot)

    def run_due(self, *, copies: int = 1) -> list[tuple[Message, Any]]:
        """Workers run every message whose ETA has come, each ``copies`` times, in turn."""
        done: list[tuple[Message, Any]] = []
        for _ in range(50):  # bounded: a run may send a message that is due at once
            due = self.broker.take_due(self.clock.now())
            if not due:
                return done
            for i, m in enumerate(due):
                done += [(m, self.deliver(m, i + k)) for k in range(copies)]
        raise AssertionError("messages keep coming due: a loop of attempt messages")

    def walk(
        self, slots: list[datetime], *, beats: int = 1, copies: int = 1
    ) -> list[tuple[Message, Any]]:
        """At each slot: beat's tick (``beats`` of them), then the due messages, 2 s later."""
        done: list[tuple[Message, Any]] = []
        for slot in slots:
            self.at(slot)
            for beat in self.services[:beats]:
                beat.tick()
            self.at(slot + timedelta(seconds=2))
            done += self.run_due(copies=copies)
        return done


WorldFactory = Callable[..., World]


@pytest.fixture
def make_world() -> Iterator[WorldFactory]:
    made: list[World] = []

    def _make(url: str, *, workers: int = 1, truth_url: str | None = None) -> World:
        settings = Settings()
        clock = FixedClock(fri(8, 0))
        broker = Broker()
        gateway = RecordingGateway()
        truth = Truth(truth_url or url)
        world = World(clock, broker, gateway, [], truth, [truth.engine])
        for _ in range(workers):
            # Wired as bootstrap() wires it: one engine for the store, one for Kei-MOTAS reads.
            store_engine = make_engine(url)
            registry_engine = make_engine(url, write_lock=False)
            world.engines += [store_engine, registry_engine]
            world.services.append(
                Pipeline(
                    store=RetryStore(store_engine),
                    registry=SqlCertificateRegistry(registry_engine, settings),
                    calendar=BusinessCalendar(settings),
                    clock=clock,
                    dispatcher=broker,
                    gateway=gateway,
                )
            )
        made.append(world)
        return world

    yield _make
    for world in made:
        for engine in world.engines:
            engine.dispose()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def continuous() -> Application:
    return Application(uid("app"), "OFFICE-A", Procedure.CONTINUOUS, uid("VIN"))


def certificates_for(subject: Application, available_at: datetime) -> list[Certificate]:
    """A valid safety certificate and the insurance certificate it names (R1.1, R1.2)."""
    insurance_no = uid("NO")
    return [
        SafetyCertificate(
            id=uid("S"),
            vehicle=subject.vehicle,
            inspected_on=INSPECTED,
            insurer_id="INS-1",
            insurance_no=insurance_no,
            available_at=available_at,
        ),
        InsuranceCertificate(
            id=uid("I"),
            insurer_id="INS-1",
            insurance_no=insurance_no,
            vehicle=subject.vehicle,
            available_at=fri(8, 0),
        ),
    ]


def effects(result: Any) -> int:
    """Attempts a delivery carried out (``run_slot``'s counts; ``held`` is none)."""
    assert isinstance(result, dict), result
    return sum(n for key, n in result.items() if key != "held")


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Start the calls at the same instant on threads; their results, in order."""
    start = threading.Barrier(len(calls))

    def go(call: Callable[[], Any]) -> Any:
        start.wait(timeout=WAIT_S)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(go, c) for c in calls]
        return [f.result(timeout=WAIT_S) for f in futures]


def wait_unlocked(truth: Truth, chain_id: str) -> None:
    """PostgreSQL: wait until a killed client's backend has let go of the chain's row lock."""
    if truth.engine.dialect.name == "sqlite":
        return  # the kernel drops a dead process's file locks at once
    stmt = text("SELECT chain_id FROM retry_chain WHERE chain_id = :c FOR UPDATE SKIP LOCKED")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with truth.engine.connect() as conn:
            if conn.execute(stmt, {"c": chain_id}).first() is not None:
                return
        time.sleep(0.02)
    pytest.fail(f"the row of {chain_id} is still locked {WAIT_S} s after its holder was killed")


# -- fault 1: the database unreachable for a slot (connection refused), then back --------


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; the database's network, cut for real.

    ``stop()`` closes the listening socket and every forwarded connection: pooled
    connections break and new connects are refused. ``start()`` listens again on
    the same port.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)  # the accept loop notices stop() within 50 ms
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=WAIT_S)
            assert not self._acceptor.is_alive(), "proxy accept loop did not stop"
        if self._listener is not None:
            self._listener.close()  # from here on: connection refused
            self._listener = None
        with self._lock:
            live = list(self._sockets)
        for sock in live:
            self._cut(sock)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            self._cut(src)
            self._cut(dst)

    def _cut(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
        sock.close()


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    """The session's PostgreSQL database, emptied and migrated for this test."""
    engine = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(postgres_server_url)
    create_registry_standin_at(postgres_server_url)
    return postgres_server_url


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    target = make_url(pg_url)
    p = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    p.start()
    yield p
    p.stop()


@pytest.mark.postgres
def test_database_unreachable_for_a_slot_then_back(
    make_world: WorldFactory, pg_url: str, proxy: TcpProxy
) -> None:
    proxied = make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    w = make_world(proxied.render_as_string(hide_password=False), truth_url=pg_url)
    late, never = continuous(), continuous()
    # Copied into Kei-MOTAS at 08:55: attempt 2, judged as of its slot 08:50, misses it.
    w.truth.insert(*certificates_for(late, fri(8, 55)))
    late_id, never_id = w.report(late), w.report(never)
    w.walk([fri(8, 40)])
    assert w.truth.attempt_numbers(late.application) == [1]
    assert w.truth.attempt_numbers(never.application) == [1]
    before = {c: w.truth.chain(c) for c in (late_id, never_id)}

    proxy.stop()  # 08:50: the database refuses connections for the whole slot
    w.at(fri(8, 50))
    with pytest.raises(OperationalError):
        w.service.tick()
    w.at(fri(8, 50, 2))
    lost = w.broker.take_due(w.clock.now())  # attempt 2's countdown comes due
    assert [m.slot for m in lost] == [fri(8, 50)]
    for m in lost:  # the task fails; Celery does not retry it: the message is gone
        with pytest.raises(OperationalError, match="refused"):
            w.deliver(m)
    for chain_id in (late_id, never_id):  # the message of one chain's attempt fails alike
        with pytest.raises(OperationalError, match="refused"):
            w.deliver(Dispatch(chain_id, 2, fri(8, 50)))
    for chain_id, chain in before.items():
        assert w.truth.chain(chain_id) == chain, "an attempt was half-written"
    assert w.truth.attempt_numbers(late.application) == [1]
    assert w.truth.attempt_numbers(never.application) == [1]

    w.at(fri(8, 55))
    port = proxy.port
    proxy.start()  # the database is back, same address
    assert proxy.port == port
    w.at(fri(9, 0))
    tick = w.service.tick()  # DESIGN 4: overdue attempts are sent again
    assert sorted((d.chain_id, d.attempt_no, d.slot) for d in tick.dispatched) == sorted(
        [(late_id, 2, fri(8, 50)), (never_id, 2, fri(8, 50))]
    )
    w.at(fri(9, 0, 2))
    # One chain's attempt message comes too (redelivered): its slot, judged as of 08:50.
    assert w.deliver(Dispatch(late_id, 2, fri(8, 50)))["next"] == 2
    w.run_due()  # the slot message: the other chain's attempt 2, then both at 09:00
    assert w.truth.attempt_numbers(late.application) == [1, 2, 3]  # 3 found it: resumed
    assert w.truth.attempt_numbers(never.application) == [1, 2, 3]
    assert w.service.confirm_outcome(f"{late_id}:resumed")  # the examination side has it
    w.walk([fri(9, 10), fri(9, 20), fri(9, 30)])

    # Late by at most one slot after the database came back.
    for subject in (late, never):
        (attempt_2,) = [h for h in w.truth.history(subject.application) if h.attempt_no == 2]
        assert attempt_2.recorded_at - attempt_2.slot <= timedelta(minutes=10, seconds=5)
    assert_ended_once(
        w.truth, late, late_id, Outcome.RESUMED, GRID[:3], w.gateway.of(late.application)
    )
    assert_ended_once(
        w.truth, never, never_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.of(never.application)
    )
    assert [d.decided_at for d in w.gateway.of(never.application)] == [fri(9, 30)]  # R9
    assert len(w.gateway.of(late.application)) == 1
    assert len(w.gateway.of(never.application)) == 1
    assert w.broker.queued == []


@pytest.mark.postgres
def test_database_cut_between_the_commit_and_its_bookkeeping(
    make_world: WorldFactory, pg_url: str, proxy: TcpProxy
) -> None:
    proxied = make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    w = make_world(proxied.render_as_string(hide_password=False), truth_url=pg_url)
    ending, going = continuous(), continuous()
    ending_id = w.report(ending)  # 08:36: attempts 08:40 .. 09:30
    going_id = w.report(going, fri(8, 46))  # 08:46: attempts 08:50 .. 09:40
    w.walk(GRID[:5])
    assert w.truth.attempt_numbers(going.application) == [1, 2, 3, 4]

    # 09:30: one slot message decides both; the database goes away while the outcome is
    # being handed over, and before the 09:40 countdown is sent.
    w.gateway.then = proxy.stop
    w.at(fri(9, 30))
    w.service.tick()
    w.at(fri(9, 30, 2))
    with contextlib.suppress(OperationalError):
        w.run_due()
    assert w.truth.attempt_numbers(ending.application) == [1, 2, 3, 4, 5, 6]
    assert w.truth.attempt_numbers(going.application) == [1, 2, 3, 4, 5]
    (row,) = w.truth.outbox(ending.application)
    # booked as sent in the deciding transaction: the send needed no second write, so
    # the cut cost no bookkeeping (before booking, it was sent again, same key)
    assert (row.sent_at, row.send_count) == (fri(9, 30, 2), 1)

    w.at(fri(9, 35))
    proxy.start()
    w.walk([fri(9, 40), fri(9, 50)])
    # Every attempt still happens, at most one slot late; the outcome goes again, same key.
    (last,) = [h for h in w.truth.history(going.application) if h.attempt_no == 6]
    assert last.recorded_at - last.slot <= timedelta(minutes=10, seconds=5)
    assert_ended_once(
        w.truth, ending, ending_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.of(ending.application)
    )
    going_slots = [*GRID[1:], fri(9, 40)]
    deliveries = w.gateway.of(going.application)
    assert_ended_once(w.truth, going, going_id, Outcome.AUTO_CORRECTED, going_slots, deliveries)
    assert w.broker.queued == []


# -- child processes: killed for real --------------------------------------------------


def spawn_child(mode: str, **args: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, mode, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_line(proc: subprocess.Popen[bytes], deadline_s: float) -> str:
    """The child's next line on stdout, or a failure with its stderr."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    line = proc.stdout.readline().decode() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=WAIT_S)
        pytest.fail(f"child said nothing within {deadline_s} s; stderr:\n{err.decode()}")
    return line.strip()


def child_args(url: str, message: Message, now: datetime) -> dict[str, Any]:
    if isinstance(message, SlotMessage):
        return {"url": url, "slot": message.slot.isoformat(), "now": now.isoformat()}
    return {
        "url": url,
        "slot": message.slot.isoformat(),
        "now": now.isoformat(),
        "chain_id": message.chain_id,
        "attempt_no": message.attempt_no,
    }


def as_sent(via: str, chain_id: str, attempt_no: int, slot: datetime) -> Message:
    """The message that carries attempt ``attempt_no``: one chain's, or its slot's."""
    return Dispatch(chain_id, attempt_no, slot) if via == "attempt" else SlotMessage(slot)


# -- fault 2: the outbox relay killed between the commit and the send -------------------


@pytest.mark.parametrize("via", ["attempt", "slot"])
def test_relay_killed_between_commit_and_send(
    make_world: WorldFactory, db_url: str, via: str
) -> None:
    w = make_world(db_url)
    subject = continuous()
    chain_id = w.report(subject)
    w.walk(GRID[:5])
    assert w.truth.attempt_numbers(subject.application) == [1, 2, 3, 4, 5]
    w.broker.take(fri(9, 30))  # a worker reserved attempt 6's message ...
    message = as_sent(via, chain_id, 6, fri(9, 30))

    # ... decides it (R8: auto-correct), commits, and dies in deliver().
    proc = spawn_child("kill-in-deliver", **child_args(db_url, message, fri(9, 30, 2)))
    out, err = proc.communicate(timeout=60)
    key = f"{chain_id}:auto_corrected"
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err.decode())
    assert out.decode().split() == ["DELIVER", key]  # it died inside the send

    # The ending was committed whole: row deleted, history, one outbox row, booked as
    # sent once at the decision (the send follows the commit), never confirmed.
    assert w.truth.chain(chain_id) is None
    assert w.truth.events(subject.application)[-1] == "auto_corrected"
    (row,) = w.truth.outbox(subject.application)
    assert (row.idempotency_key, row.sent_at, row.send_count, row.confirmed_at) == (
        key,
        fri(9, 30, 2),
        1,
        None,
    )

    # The relay treats it as a message the broker lost: sent again once the back-off
    # (RELAY_BACKOFF_MIN, 20 minutes) has passed, not before.
    w.at(fri(9, 30, 30))
    assert w.service.relay() == 0
    w.at(fri(9, 50, 1))
    assert w.service.relay() == 0
    w.at(fri(9, 50, 3))
    assert w.service.relay() == 1
    assert [d.idempotency_key for d in w.gateway.delivered] == [key]
    w.at(fri(10, 0))
    assert w.service.relay() == 0  # sent again less than its back-off ago
    assert w.service.confirm_outcome(key)
    w.at(fri(10, 30))  # confirmed: never again, however long
    assert w.service.relay() == 0
    w.at(fri(10, 40))
    tick = w.service.tick()
    assert (tick.dispatched, tick.relayed) == ([], 0)
    assert len(w.gateway.delivered) == 1
    assert_ended_once(w.truth, subject, chain_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.delivered)
    (row,) = w.truth.outbox(subject.application)
    assert row.send_count == 2 and row.confirmed_at is not None


# -- fault 3: a worker killed while an attempt is inside its transaction ----------------


@pytest.mark.parametrize("via", ["attempt", "slot"])
@pytest.mark.parametrize("attempt_no", [3, 6], ids=["middle", "last"])
def test_worker_killed_inside_the_attempt_transaction(
    make_world: WorldFactory, db_url: str, attempt_no: int, via: str
) -> None:
    w = make_world(db_url)
    subject = continuous()
    chain_id = w.report(subject)
    slot = GRID[attempt_no - 1]
    w.walk(GRID[: attempt_no - 1])
    w.broker.take(slot)  # a worker reserved the attempt's message
    message = as_sent(via, chain_id, attempt_no, slot)
    before = w.truth.chain(chain_id)
    assert before is not None and before.attempts_made == attempt_no - 1
    assert before.dispatched_for == slot

    now = slot + timedelta(seconds=2)
    proc = spawn_child("hang-before-commit", **child_args(db_url, message, now))
    try:
        line = read_line(proc, WAIT_S)
        # Claimed and written, not committed (row lock / write lock held).
        assert line.startswith("IN-TRANSACTION "), line
        statements = json.loads(line.removeprefix("IN-TRANSACTION "))
        assert any(s.startswith("INSERT INTO retry_history") for s in statements), statements
        if attempt_no == 6:
            assert any(s.startswith("DELETE FROM retry_chain") for s in statements), statements
            assert any(s.startswith("INSERT INTO outbox") for s in statements), statements
        else:
            assert any(s.startswith("UPDATE retry_chain") for s in statements), statements
        assert w.truth.chain(chain_id) == before  # nobody sees uncommitted work
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGKILL

    assert w.truth.chain(chain_id) == before, "the killed attempt left a trace on the chain"
    assert w.truth.attempt_numbers(subject.application) == list(range(1, attempt_no))
    assert w.truth.outbox(subject.application) == []
    wait_unlocked(w.truth, chain_id)

    # The message is redelivered (visibility timeout, or the tick): it runs once.
    w.at(slot + timedelta(seconds=5))
    assert effects(w.deliver(message)) == 1
    assert effects(w.deliver(message)) == 0
    w.walk(GRID[attempt_no:])
    assert_ended_once(w.truth, subject, chain_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.delivered)
    assert len(w.gateway.delivered) == 1


# -- fault 4: the same attempt message delivered twice -------------------------------


@pytest.mark.parametrize(
    ("attempt_no", "effect"), [(1, "next"), (6, "auto_corrected")], ids=["first", "last"]
)
def test_same_attempt_message_twice_at_the_same_time(
    make_world: WorldFactory, db_url: str, attempt_no: int, effect: str
) -> None:
    w = make_world(db_url, workers=2)
    subject = continuous()
    chain_id = w.report(subject)
    slot = GRID[attempt_no - 1]
    w.walk(GRID[: attempt_no - 1])
    slot_message = w.broker.take(slot)
    attempt = Dispatch(chain_id, attempt_no, slot)  # the chain's own message, twice

    w.at(slot + timedelta(seconds=2))
    results = in_parallel(*(lambda k=k: w.deliver(attempt, k) for k in (0, 1)))
    assert sorted(effects(r) for r in results) == [0, 1], results
    assert sum(r.get(effect, 0) for r in results) == 1, results
    assert w.truth.attempt_numbers(subject.application) == list(range(1, attempt_no + 1))
    assert effects(w.deliver(slot_message)) == 0  # the slot's own message, a third delivery
    if attempt_no < 6:
        assert w.broker.count(GRID[attempt_no]) == 1  # one countdown, not two
    w.walk(GRID[attempt_no:])
    assert_ended_once(w.truth, subject, chain_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.delivered)
    assert len(w.gateway.delivered) == 1


@pytest.mark.parametrize("attempt_no", [1, 6], ids=["first", "last"])
def test_same_slot_message_twice_at_the_same_time(
    make_world: WorldFactory, db_url: str, attempt_no: int
) -> None:
    w = make_world(db_url, workers=2)
    subject = continuous()
    chain_id = w.report(subject)
    slot = GRID[attempt_no - 1]
    w.walk(GRID[: attempt_no - 1])
    message = w.broker.take(slot)
    slow = SlowRegistry(w.services[0].deps.registry, 0.5)
    w.services[0].deps.registry = slow  # the first worker holds its claim open for 0.5 s

    w.at(slot + timedelta(seconds=2))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(w.deliver, message, 0)
        assert slow.entered.wait(WAIT_S), "the first worker never reached the registry"
        second = pool.submit(w.deliver, message, 1)  # arrives while the first holds the claim
        results = [first.result(timeout=WAIT_S), second.result(timeout=WAIT_S)]
    assert [effects(r) for r in results] == [1, 0], results
    if w.service.deps.store.shares_claims:  # SKIP LOCKED: the second saw the row held, to try again
        assert results[1].get("held") == 1, results
    assert w.truth.attempt_numbers(subject.application) == list(range(1, attempt_no + 1))
    w.services[0].deps.registry = slow.inner
    if attempt_no < 6:
        assert w.broker.count(GRID[attempt_no]) == 1  # one countdown, not two
    w.walk(GRID[attempt_no:])
    assert_ended_once(w.truth, subject, chain_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.delivered)
    assert len(w.gateway.delivered) == 1


@pytest.mark.parametrize("via", ["attempt", "slot"])
def test_every_attempt_message_delivered_twice_in_a_row(
    make_world: WorldFactory, db_url: str, via: str
) -> None:
    w = make_world(db_url, workers=2)
    subject = continuous()
    chain_id = w.report(subject)
    for n, slot in enumerate(GRID, start=1):
        w.at(slot)
        w.service.tick()
        w.at(slot + timedelta(seconds=2))
        if via == "attempt":  # the chain's own message, on one worker then the other ...
            again = [w.deliver(Dispatch(chain_id, n, slot), k) for k in (0, 1)]
            assert [effects(r) for r in again] == [1, 0], again
        # ... and the slot's message, each on one worker then the other.
        done = w.run_due(copies=2)
        assert [effects(r) for _, r in done] == ([0, 0] if via == "attempt" else [1, 0]), done
        assert w.truth.attempt_numbers(subject.application) == list(range(1, n + 1))
    # Late redeliveries of every message ever sent, after the chain ended.
    w.at(fri(10, 0))
    late = [w.deliver(m, 1) for m in w.broker.sent_log]
    assert late and [effects(r) for r in late] == [0] * len(late)
    assert_ended_once(w.truth, subject, chain_id, Outcome.AUTO_CORRECTED, GRID, w.gateway.delivered)
    assert len(w.gateway.delivered) == 1


# -- fault 5: two beats -----------------------------------------------------------------


def test_two_beats_tick_the_same_slots(make_world: WorldFactory, db_url: str) -> None:
    w = make_world(db_url, workers=2)  # two beats, two workers
    fresh, parked = continuous(), continuous()
    fresh_id = w.report(fresh, datetime(2026, 11, 29, 10, 0, tzinfo=TOKYO))  # Sunday: R13
    parked_id = w.report(parked, fri(15, 55))  # no slot left before 16:00: R12
    assert w.broker.queued == []  # both wait for Monday's 08:30 tick, not a countdown

    def both_beats_tick() -> None:
        in_parallel(*(lambda s=s: s.tick() for s in w.services))

    w.at(mon(8, 30))
    both_beats_tick()
    assert w.broker.count(mon(8, 30)) in (1, 2)  # at most one per beat
    w.at(mon(8, 30, 2))
    w.run_due()
    assert w.truth.attempt_numbers(fresh.application) == [1]
    assert w.truth.attempt_numbers(parked.application) == [1]  # R11: its one attempt

    w.at(mon(8, 40))
    both_beats_tick()
    w.at(mon(8, 40, 2))
    assert [effects(r) for _, r in w.run_due()] == [1]  # the countdown, once
    w.broker.take(mon(8, 50))  # attempt 3's countdown: lost (Redis forgot it)
    w.at(mon(8, 50))
    both_beats_tick()
    assert w.broker.queued == []  # in flight as far as SQL knows, not late yet
    w.at(mon(9, 0))
    both_beats_tick()
    # Overdue: sent again, at most once per beat (a beat skips the row the other holds)
    assert w.broker.count(mon(8, 50)) in (1, 2)
    w.at(mon(9, 0, 2))
    w.run_due()
    assert w.truth.attempt_numbers(fresh.application) == [1, 2, 3, 4]
    for slot in (mon(9, 10), mon(9, 20), mon(9, 30)):
        w.at(slot)
        both_beats_tick()
        w.at(slot + timedelta(seconds=2))
        w.run_due()
    assert w.broker.queued == []

    r13_slots = [mon(8, 30), mon(8, 40), mon(8, 50), mon(9, 0), mon(9, 10), mon(9, 20)]
    assert_ended_once(
        w.truth, fresh, fresh_id, Outcome.AUTO_CORRECTED, r13_slots, w.gateway.of(fresh.application)
    )
    assert_ended_once(
        w.truth,
        parked,
        parked_id,
        Outcome.AUTO_CORRECTED,
        [mon(8, 30)],
        w.gateway.of(parked.application),
    )


# -- fault 6: the same report twice ---------------------------------------------------


def test_same_report_twice_concurrently_then_after_the_decision(
    make_world: WorldFactory, db_url: str
) -> None:
    w = make_world(db_url, workers=2)
    subject = continuous()
    w.truth.insert(*certificates_for(subject, fri(8, 45)))
    same = Report(subject, frozenset({SAFETY}), frozenset(), DETECTED)
    w.at(fri(8, 36, 5))
    accepted = in_parallel(*(lambda s=s: s.accept_report(same) for s in w.services))
    assert sorted(a.created for a in accepted) == [False, True]  # R4: one record
    assert {a.chain_id for a in accepted} == {accepted[0].chain_id}
    # DESIGN 11: the same (application, detected_at) again is a duplicate; the chain goes on.
    assert sorted(a.retry for a in accepted) == [False, True]
    chain_id = accepted[0].chain_id
    assert w.truth.events(subject.application) == ["reported", "duplicate"]
    assert w.broker.count(fri(8, 40)) in (1, 2)

    w.walk(GRID[:2])
    assert w.truth.attempt_numbers(subject.application) == [1, 2]  # found at 08:50
    assert w.service.confirm_outcome(f"{chain_id}:resumed")  # the examination side has it

    # Redelivered after the decision, by both workers: no new chain, no second outcome.
    w.at(fri(9, 5))
    again = [s.accept_report(same) for s in w.services]
    assert [(a.chain_id, a.retry, a.created) for a in again] == [(chain_id, False, False)] * 2
    assert all(a.reason.startswith("duplicate report") for a in again), again
    assert w.truth.live_of(subject.application) is None
    assert w.truth.events(subject.application) == [
        "reported",
        "duplicate",
        "attempt",
        "resumed",
        "duplicate",
        "duplicate",
    ]
    w.at(fri(9, 10))
    assert w.service.tick().dispatched == []
    assert_ended_once(
        w.truth, subject, chain_id, Outcome.RESUMED, GRID[:2], w.gateway.of(subject.application)
    )
    assert len(w.gateway.delivered) == 1


def test_same_immediate_report_twice_gives_one_outcome(
    make_world: WorldFactory, db_url: str
) -> None:
    w = make_world(db_url)
    # R1: new-inspection retries are not in force: auto-corrected at once.
    subject = Application(uid("app"), "OFFICE-A", Procedure.NEW, uid("VIN"), "INS-9", uid("NO"))
    same = Report(subject, frozenset({CertificateKind.COMPLETION}), frozenset(), fri(10, 5))
    w.at(fri(10, 5, 5))
    first = w.service.accept_report(same)
    w.at(fri(10, 5, 9))
    second = w.service.accept_report(same)
    assert (first.retry, first.created) == (False, True)
    assert (second.chain_id, second.retry, second.created) == (first.chain_id, False, False)
    assert w.truth.events(subject.application) == ["auto_corrected", "duplicate"]
    key = f"{first.chain_id}:auto_corrected"
    assert [r.idempotency_key for r in w.truth.outbox(subject.application)] == [key]
    assert [d.idempotency_key for d in w.gateway.delivered] == [key]
    w.at(fri(10, 10))
    assert w.service.relay() == 0
    assert w.broker.queued == []


# -- the child processes ------------------------------------------------------------------


class SuicidalGateway:
    """Dies with SIGKILL inside the send: the outcome is committed, never handed over."""

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        print("DELIVER", outcomes[0].idempotency_key, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        """Receipts go; only an outcome's send dies."""


class ArmingRegistry(RegistryWrapper):
    """Arms the commit hook: the next commit after this read is the attempt's claim."""

    armed = False

    def present(
        self, subject: Application, kinds: frozenset[CertificateKind], as_of: datetime
    ) -> frozenset[CertificateKind]:
        found = self.inner.present(subject, kinds, as_of)
        self.armed = True
        return found

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        found = self.inner.present_many(requests, as_of)
        self.armed = True
        return found


def _hold_before_commit(engine: Engine, arming: ArmingRegistry) -> None:
    """Report the claim's statements to the parent, then wait (inside the transaction)."""
    statements: list[str] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _seen(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        if arming.armed:
            statements.append(" ".join(statement.split()[:3]))

    @event.listens_for(engine, "commit")
    def _hold(_conn: Any) -> None:
        if arming.armed:
            print("IN-TRANSACTION", json.dumps(statements), flush=True)
            time.sleep(CHILD_HOLD_S)  # the parent SIGKILLs us here
            os._exit(3)  # never commit


def _child_main(argv: list[str]) -> int:
    mode, raw = argv
    args = json.loads(raw)
    settings = Settings()
    store = RetryStore(make_engine(args["url"]))
    registry: CertificateRegistry = SqlCertificateRegistry(
        make_engine(args["url"], write_lock=False), settings
    )
    gateway: Any = RecordingGateway()
    if mode == "kill-in-deliver":
        gateway = SuicidalGateway()
    elif mode == "hang-before-commit":
        registry = arming = ArmingRegistry(registry)
        _hold_before_commit(store.engine, arming)
    else:
        raise SystemExit(f"unknown mode {mode}")
    service = Pipeline(
        store=store,
        registry=registry,
        calendar=BusinessCalendar(settings),
        clock=FixedClock(datetime.fromisoformat(args["now"])),
        dispatcher=Broker(),
        gateway=gateway,
    )
    slot = datetime.fromisoformat(args["slot"])
    result = service.run_slot(slot)  # a chain's own attempt message runs its slot too
    print("RETURNED", result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
