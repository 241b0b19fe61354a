"""The unit of work over SQL and its parts (R4, R5, R10, R15, DESIGN 3-5).

Every test runs against a real SQLite file and a real PostgreSQL database (the
``store`` fixture); the row-lock tests (``SKIP LOCKED``, ``FOR UPDATE``) run on
PostgreSQL only, since SQLite serialises whole transactions (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pendulum
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError, StatementError

from retry_pipeline.adapters.orm import ChainRow, HistoryRow, OutboxRow
from retry_pipeline.adapters.store import RetryStore, SqlUnitOfWork
from retry_pipeline.errors import DuplicateRecord
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    Cursor,
    Ending,
    Event,
    HistoryEntry,
    Outcome,
    PendingOutcome,
    Phase,
    Procedure,
    idempotency_key,
)

T = TypeVar("T")

TOKYO = ZoneInfo("Asia/Tokyo")
SAFETY = CertificateKind.SAFETY
INSURANCE = CertificateKind.INSURANCE
COMPLETION = CertificateKind.COMPLETION

# SPEC worked example: Fri 2026-11-27, found missing at 08:36, first attempt 08:40 (R7, R9).
DETECTED = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
NOW = datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO)
LATER = datetime(2026, 11, 27, 8, 41, 7, tzinfo=TOKYO)


def jst(month: int, day: int, hour: int, minute: int) -> pendulum.DateTime:
    return pendulum.datetime(2026, month, day, hour, minute, tz="Asia/Tokyo")


SLOT_0840 = jst(11, 27, 8, 40)
SLOT_0850 = jst(11, 27, 8, 50)
SLOT_0900 = jst(11, 27, 9, 0)
MON_0830 = jst(11, 30, 8, 30)

ONLY_POSTGRES = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def new_subject(
    office: str = "OFFICE-A", procedure: Procedure = Procedure.CONTINUOUS
) -> Application:
    tag = uuid.uuid4().hex
    return Application(
        application=f"app-{tag}",
        office=office,
        procedure=procedure,
        vehicle=f"VIN-{tag[:12]}",
    )


def new_chain(
    subject: Application | None = None,
    *,
    slot: pendulum.DateTime = SLOT_0840,
    phase: Phase = Phase.SAME_DAY,
    used: int = 0,
    missing: frozenset[CertificateKind] = frozenset({SAFETY}),
    detected_at: datetime = DETECTED,
) -> Chain:
    return Chain(
        chain_id=uuid.uuid4().hex,
        subject=subject or new_subject(),
        missing=missing,
        found=frozenset(),
        confirmed=frozenset(),
        detected_at=detected_at,
        attempts_made=0,
        cursor=Cursor(phase, used, slot),
        version=1,
    )


def inserted(store: RetryStore, *chains: Chain) -> list[Chain]:
    with store.unit() as u:
        u.chains.insert(chains, NOW)
    return list(chains)


def line(
    chain: Chain,
    event: Event,
    *,
    slot: datetime | None = SLOT_0840,
    attempt_no: int | None = None,
    detail: str = "",
    recorded_at: datetime = NOW,
) -> HistoryEntry:
    return HistoryEntry(
        chain_id=chain.chain_id,
        application=chain.subject.application,
        event=event.value,
        attempt_no=attempt_no,
        slot=slot,
        missing=("safety",),
        detail=detail,
        recorded_at=recorded_at,
        office=chain.subject.office,
    )


def ending(
    chain: Chain,
    outcome: Outcome = Outcome.RESUMED,
    missing: frozenset[CertificateKind] = frozenset(),
    decided_at: datetime = SLOT_0840,
) -> Ending:
    return Ending(chain.chain_id, chain.subject, outcome, missing, decided_at, "test")


def count(store: RetryStore, model: type[Any]) -> int:
    with store.unit() as u:
        return int(u.session.scalar(select(func.count()).select_from(model)) or 0)


def ids(chains: list[Chain]) -> list[str]:
    return [c.chain_id for c in chains]


def ids_of(pending: list[PendingOutcome]) -> list[int]:
    return [p.id for p in pending]


def wait_for_lock_waiter(store: RetryStore, deadline_s: float = 20.0) -> None:
    """PostgreSQL: poll until some session of this database waits on a lock."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with store.engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "select count(*) from pg_stat_activity "
                    "where datname = current_database() and wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    pytest.fail("no session ever waited on a lock")


@contextmanager
def held_open(store: RetryStore, work: Callable[[SqlUnitOfWork], T]) -> Iterator[T]:
    """Run ``work`` in a unit on another thread and keep that transaction open meanwhile."""
    ready, release = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with store.unit() as u:
                out["value"] = work(u)
                ready.set()
                if not release.wait(timeout=60):
                    raise RuntimeError("the held unit was never released")
        except BaseException as exc:  # re-raised in the test's thread below
            out["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(timeout=30), "the held unit never got going"
    if "error" in out:
        raise out["error"]
    try:
        yield out["value"]
    finally:
        release.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]


def no_lock_waits(u: SqlUnitOfWork) -> None:
    """PostgreSQL: a statement of this unit that would wait on a row lock fails instead."""
    u.session.execute(text("SET LOCAL lock_timeout = '2s'"))


# -- the unit of work: one transaction ---------------------------------------------------


def test_a_unit_that_raises_writes_nothing_and_runs_no_after_commit(store: RetryStore) -> None:
    chain = new_chain()
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="worker died"), store.unit() as u:
        u.chains.insert([chain], NOW)
        u.history.append([line(chain, Event.REPORTED)])
        u.outbox.add([ending(new_chain())], NOW)
        u.signals.add(SLOT_0900, NOW)
        u.dead_letters.add("retry_pipeline.report", "bad", "{}", NOW)
        u.after_commit(lambda: ran.append("after"))
        assert u.chains.get(chain.chain_id) == chain  # visible inside the unit...
        raise RuntimeError("worker died")
    assert ran == []
    with store.unit() as u:  # ...and gone after it
        assert u.chains.get(chain.chain_id) is None
        assert u.history.lines() == []
        assert u.outbox.count_unconfirmed() == 0
        assert u.signals.between(date(2026, 11, 27), date(2026, 11, 27)) == []
        assert u.dead_letters.newest(10) == []


def test_after_commit_runs_in_order_once_the_unit_has_committed(store: RetryStore) -> None:
    chain = new_chain()
    seen: list[tuple[str, Chain | None]] = []

    def look(tag: str) -> Callable[[], None]:
        def action() -> None:
            with store.unit() as other:  # another transaction sees the committed record
                seen.append((tag, other.chains.get(chain.chain_id)))

        return action

    with store.unit() as u:
        u.chains.insert([chain], NOW)
        u.after_commit(look("first"))
        u.after_commit(look("second"))
        assert seen == []  # not before the block ends
    assert seen == [("first", chain), ("second", chain)]


def test_a_unit_that_only_reads_runs_its_after_commit(store: RetryStore) -> None:
    ran: list[int] = []
    with store.unit() as u:
        u.after_commit(lambda: ran.append(1))
    assert ran == [1]


# -- R4: one record per application ------------------------------------------------------


def test_insert_then_get_round_trips_every_field(store: RetryStore) -> None:
    subject = Application(
        application=f"app-{uuid.uuid4().hex}",
        office="OFFICE-N",
        procedure=Procedure.NEW,
        vehicle="VIN-NEW-1",
        insurer_id="INS-7",
        insurance_no="NO-123",
    )
    chain = Chain(
        chain_id=uuid.uuid4().hex,
        subject=subject,
        missing=frozenset({SAFETY, INSURANCE}),
        found=frozenset({COMPLETION}),
        confirmed=frozenset({INSURANCE}),
        detected_at=DETECTED,
        attempts_made=2,
        cursor=Cursor(Phase.SAME_DAY, 2, SLOT_0900),
        version=3,
        dispatched_for=SLOT_0850,
    )
    inserted(store, chain)
    with store.unit() as u:
        got = u.chains.get(chain.chain_id)
        row = u.session.get(ChainRow, chain.chain_id)
    assert got == chain
    assert got is not None and row is not None
    assert got.cursor.slot.isoformat() == "2026-11-27T09:00:00+09:00"  # read in Japan time
    assert row.missing == ["safety", "insurance"]  # stable kind order
    assert row.created_at == NOW
    assert row.updated_at == NOW


def test_get_of_an_unknown_chain_is_none(store: RetryStore) -> None:
    inserted(store, new_chain())
    with store.unit() as u:
        assert u.chains.get(uuid.uuid4().hex) is None


def test_r4_second_record_of_an_application_raises_and_writes_nothing(
    store: RetryStore,
) -> None:
    subject = new_subject()
    (first,) = inserted(store, new_chain(subject))
    other = new_chain()
    with store.unit() as u:
        with pytest.raises(DuplicateRecord):
            u.chains.insert([other, new_chain(subject)], LATER)  # one batch
        # The unit goes on: only the failed batch was undone.
        assert u.chains.get(other.chain_id) is None
        u.history.append([line(first, Event.MERGED)])
    with store.unit() as u:
        assert u.chains.of_office(None) == [first]
        assert [h.event for h in u.history.lines()] == ["merged"]


def test_r4_same_application_twice_in_one_batch_raises(store: RetryStore) -> None:
    subject = new_subject()
    with pytest.raises(DuplicateRecord), store.unit() as u:
        u.chains.insert([new_chain(subject), new_chain(subject)], NOW)
    assert count(store, ChainRow) == 0


def test_r4_concurrent_insert_waits_for_the_first_and_raises(store: RetryStore) -> None:
    """R4: B inserts while A's insert of the same application is not committed yet."""
    subject = new_subject()
    a, b = new_chain(subject), new_chain(subject)
    out: dict[str, Any] = {}

    def second() -> None:
        try:
            with store.unit() as u:
                try:
                    u.chains.insert([b], LATER)
                except DuplicateRecord as exc:
                    out["refused"] = exc
                # The unit is still usable: it finds A's record, as intake then merges.
                out["found"] = u.chains.of_applications([subject.application], lock=True)
                u.history.append([line(b, Event.DUPLICATE)])
        except Exception as exc:  # surfaced by the assertions below
            out["error"] = exc

    with store.unit() as u:
        u.chains.insert([a], NOW)
        worker = threading.Thread(target=second, daemon=True)
        worker.start()
        if store.engine.dialect.name == "postgresql":
            wait_for_lock_waiter(store)  # B sits on the unique index behind A
        else:
            worker.join(timeout=0.3)  # BEGIN IMMEDIATE: B waits for A's write lock
            assert worker.is_alive()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert "error" not in out, out.get("error")
    assert isinstance(out["refused"], DuplicateRecord)
    assert out["found"] == {subject.application: a}
    with store.unit() as u:
        assert u.chains.of_office(None) == [a]
        assert [h.chain_id for h in u.history.lines()] == [b.chain_id]


def test_r4_many_concurrent_inserts_leave_one_record(store: RetryStore) -> None:
    subject = new_subject()
    n = 6
    chains = [new_chain(subject) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=20)
    won: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def insert(chain: Chain) -> None:
        try:
            with store.unit() as u:
                barrier.wait()
                u.chains.insert([chain], NOW)
            with guard:
                won.append(chain.chain_id)
        except DuplicateRecord:
            with guard:
                refused.append(chain.chain_id)
        except BaseException as exc:
            with guard:
                errors.append(exc)

    threads = [threading.Thread(target=insert, args=(c,), daemon=True) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(won) == 1
    assert len(refused) == n - 1
    with store.unit() as u:
        assert ids(u.chains.of_office(None)) == won


def test_insert_of_nothing_is_a_no_op(store: RetryStore) -> None:
    with store.unit() as u:
        u.chains.insert([], NOW)
        u.chains.save([], NOW)
        u.chains.mark_dispatched([], SLOT_0840)
        u.chains.delete([])
        u.history.append([])
        assert u.outbox.add([], NOW) == []
        u.outbox.mark_sent([], NOW)
    assert count(store, ChainRow) == 0


# -- reading chains ------------------------------------------------------------------------


@pytest.mark.parametrize("lock", [False, True])
def test_of_applications_maps_each_live_application(store: RetryStore, lock: bool) -> None:
    one, two, three = inserted(store, new_chain(), new_chain(), new_chain())
    unknown = new_subject().application
    wanted = [two.subject.application, one.subject.application, unknown, one.subject.application]
    with store.unit() as u:
        found = u.chains.of_applications(wanted, lock=lock)
        assert u.chains.of_applications([], lock=lock) == {}
    assert found == {one.subject.application: one, two.subject.application: two}
    assert three.subject.application not in found


def test_batches_over_many_chains(store: RetryStore) -> None:
    """Reads and writes by id list cover every id however long the list (IN chunks)."""
    chains = [new_chain() for _ in range(1234)]
    inserted(store, *chains)
    apps = [c.subject.application for c in chains]
    with store.unit() as u:
        assert u.chains.of_applications(apps, lock=True) == {
            c.subject.application: c for c in chains
        }
        u.chains.mark_dispatched(ids(chains), SLOT_0840)
    with store.unit() as u:
        assert all(c.dispatched_for == SLOT_0840 for c in u.chains.of_office(None))
        u.chains.delete(ids(chains[:1001]))
    with store.unit() as u:
        assert sorted(ids(u.chains.of_office(None))) == sorted(ids(chains[1001:]))


@ONLY_POSTGRES
def test_of_applications_with_lock_holds_the_rows_until_commit(store: RetryStore) -> None:
    (chain,) = inserted(store, new_chain())
    app = chain.subject.application
    with held_open(store, lambda u: u.chains.of_applications([app], lock=True)) as held:
        assert held == {app: chain}
        with store.unit() as u:  # a plain read does not wait
            no_lock_waits(u)
            assert u.chains.of_applications([app], lock=False) == {app: chain}
        with pytest.raises(OperationalError, match="lock"), store.unit() as u:
            no_lock_waits(u)
            u.chains.of_applications([app], lock=True)
    with store.unit() as u:  # released by the commit
        no_lock_waits(u)
        assert u.chains.of_applications([app], lock=True) == {app: chain}


def test_r15_of_office_scopes_to_one_office_oldest_detection_first(store: RetryStore) -> None:
    a_late = new_chain(
        new_subject("OFFICE-A"), detected_at=datetime(2026, 11, 27, 9, 5, tzinfo=TOKYO)
    )
    b = new_chain(new_subject("OFFICE-B"))
    a_early = new_chain(new_subject("OFFICE-A"))
    ties = sorted([new_chain(new_subject("OFFICE-C")) for _ in range(3)], key=lambda c: c.chain_id)
    inserted(store, a_late, b, a_early, *reversed(ties))
    with store.unit() as u:
        office_a = u.chains.of_office("OFFICE-A")
        office_b = u.chains.of_office("OFFICE-B")
        office_c = u.chains.of_office("OFFICE-C")
        a_one = u.chains.of_office("OFFICE-A", application=a_late.subject.application)
        a_asks_b = u.chains.of_office("OFFICE-A", application=b.subject.application)
        anyone_b = u.chains.of_office(None, application=b.subject.application)
        unknown = u.chains.of_office("OFFICE-Z")
        everyone = u.chains.of_office(None)
    assert office_a == [a_early, a_late]
    assert office_b == [b]
    assert office_c == ties  # same detection: by chain id
    assert a_one == [a_late]
    assert a_asks_b == []
    assert anyone_b == [b]
    assert unknown == []
    assert len(everyone) == 6
    assert everyone[-1] == a_late


@pytest.fixture
def slotted(store: RetryStore) -> dict[str, Chain]:
    chains = {
        "0840a": new_chain(),
        "0840b": new_chain(),
        "0850": new_chain(slot=SLOT_0850, used=1),
        "mon": new_chain(slot=MON_0830, phase=Phase.NEXT_DAY),
    }
    inserted(store, *chains.values())
    return chains


def test_due_oldest_slot_first_then_chain_id(store: RetryStore, slotted: dict[str, Chain]) -> None:
    c = slotted
    ties = sorted([c["0840a"].chain_id, c["0840b"].chain_id])
    with store.unit() as u:
        due = u.chains.due(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO), 100)
        limited = u.chains.due(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO), 1)
    assert ids(due) == [*ties, c["0850"].chain_id]
    assert ids(limited) == ties[:1]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(datetime(2026, 11, 27, 8, 39, 59, tzinfo=TOKYO), [], id="before-first-slot"),
        pytest.param(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO), ["0840a", "0840b"], id="at-slot"),
        pytest.param(
            datetime(2026, 11, 27, 8, 49, 59, 999999, tzinfo=TOKYO),
            ["0840a", "0840b"],
            id="just-before-0850",
        ),
        pytest.param(
            datetime(2026, 11, 26, 23, 50, tzinfo=UTC), ["0840a", "0840b", "0850"], id="utc-0850"
        ),
        pytest.param(
            datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO),
            ["0840a", "0840b", "0850", "mon"],
            id="monday-opening",
        ),
    ],
)
def test_due_cut_off_is_inclusive(
    store: RetryStore, slotted: dict[str, Chain], now: datetime, expected: list[str]
) -> None:
    with store.unit() as u:
        due = set(ids(u.chains.due(now, 100)))
    assert due == {slotted[k].chain_id for k in expected}


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(SLOT_0840, SLOT_0850, ["0840a", "0840b"], id="start-inclusive-end-exclusive"),
        pytest.param(
            SLOT_0840, SLOT_0850.add(microseconds=1), ["0840a", "0840b", "0850"], id="end"
        ),
        pytest.param(SLOT_0840.add(microseconds=1), MON_0830, ["0850"], id="after-0840"),
        pytest.param(
            datetime(2026, 11, 27, 0, 0, tzinfo=UTC),  # 09:00 Japan time
            datetime(2026, 12, 1, 0, 0, tzinfo=TOKYO),
            ["mon"],
            id="utc-bounds",
        ),
        pytest.param(SLOT_0900, MON_0830, [], id="nothing-between"),
    ],
)
def test_slotted_between_is_half_open_and_ordered(
    store: RetryStore,
    slotted: dict[str, Chain],
    start: datetime,
    end: datetime,
    expected: list[str],
) -> None:
    with store.unit() as u:
        found = u.chains.slotted_between(start, end)
    want = sorted((slotted[k] for k in expected), key=lambda c: (c.cursor.slot, c.chain_id))
    assert found == want


@ONLY_POSTGRES
def test_r10_slotted_between_locks_what_it_returns(
    store: RetryStore, slotted: dict[str, Chain]
) -> None:
    with held_open(store, lambda u: u.chains.slotted_between(SLOT_0840, SLOT_0850)) as parked:
        assert ids(parked) == sorted([slotted["0840a"].chain_id, slotted["0840b"].chain_id])
        with store.unit() as u:  # a slot's batch skips them; chains outside stay free
            no_lock_waits(u)
            assert u.chains.claim(SLOT_0840, 10) == []
            assert u.chains.claim(SLOT_0850, 10) == [slotted["0850"]]
        with pytest.raises(OperationalError, match="lock"), store.unit() as u:
            no_lock_waits(u)
            u.chains.of_applications([slotted["0840a"].subject.application], lock=True)


# -- DESIGN 3: a slot's batch claims its chains ------------------------------------------------


def test_claim_takes_only_chains_at_exactly_that_slot(
    store: RetryStore, slotted: dict[str, Chain]
) -> None:
    off_by_a_second = new_chain(slot=SLOT_0840.add(seconds=1))
    inserted(store, off_by_a_second)
    with store.unit() as u:
        at_0840 = u.chains.claim(SLOT_0840, 10)
        as_utc = u.chains.claim(datetime(2026, 11, 26, 23, 40, tzinfo=UTC), 10)
        at_0850 = u.chains.claim(SLOT_0850, 10)
        at_0900 = u.chains.claim(SLOT_0900, 10)
    pair = {slotted["0840a"].chain_id, slotted["0840b"].chain_id}
    assert set(ids(at_0840)) == pair  # not the earlier-slotted, not 08:40:01
    assert set(ids(as_utc)) == pair  # the slot is an instant, not a zone
    assert at_0850 == [slotted["0850"]]
    assert at_0900 == []


def test_claim_takes_at_most_limit(store: RetryStore) -> None:
    chains = inserted(store, *(new_chain() for _ in range(5)))
    with store.unit() as u:
        claimed = u.chains.claim(SLOT_0840, 3)
    assert len(claimed) == 3
    assert set(ids(claimed)) <= set(ids(chains))
    assert len(set(ids(claimed))) == 3


@ONLY_POSTGRES
def test_concurrent_claims_of_one_slot_get_disjoint_sets(store: RetryStore) -> None:
    """SKIP LOCKED: a second batch of the slot takes the rest instead of waiting."""
    chains = inserted(store, *(new_chain() for _ in range(7)))
    inserted(store, new_chain(slot=SLOT_0850))
    with held_open(store, lambda u: u.chains.claim(SLOT_0840, 4)) as first, store.unit() as u:
        no_lock_waits(u)
        second = u.chains.claim(SLOT_0840, 10)
        third = u.chains.claim(SLOT_0840, 10)  # its own locks do not hide rows from it
    assert len(first) == 4
    assert len(second) == 3
    assert set(ids(first)).isdisjoint(ids(second))
    assert set(ids(first)) | set(ids(second)) == set(ids(chains))
    assert set(ids(third)) == set(ids(second))


# -- writing chains ------------------------------------------------------------------------------


def test_save_round_trips_every_field_it_writes(store: RetryStore) -> None:
    moved, parked, untouched = inserted(store, new_chain(), new_chain(), new_chain())
    moved2 = Chain(
        chain_id=moved.chain_id,
        subject=moved.subject,
        missing=frozenset({INSURANCE}),
        found=frozenset({SAFETY}),
        confirmed=frozenset({COMPLETION}),
        detected_at=moved.detected_at,
        attempts_made=1,
        cursor=Cursor(Phase.SAME_DAY, 1, SLOT_0850),
        version=2,
        dispatched_for=SLOT_0840,
    )
    parked2 = Chain(
        chain_id=parked.chain_id,
        subject=parked.subject,
        missing=frozenset({SAFETY, INSURANCE}),
        found=frozenset(),
        confirmed=frozenset({INSURANCE, COMPLETION}),
        detected_at=parked.detected_at,
        attempts_made=6,
        cursor=Cursor(Phase.NEXT_DAY, 0, MON_0830),
        version=9,
        dispatched_for=None,
    )
    with store.unit() as u:
        u.chains.save([moved2, parked2], LATER)
        assert u.chains.get(moved.chain_id) == moved2  # read back inside the same unit
    with store.unit() as u:
        assert u.chains.get(moved.chain_id) == moved2
        assert u.chains.get(parked.chain_id) == parked2
        assert u.chains.get(untouched.chain_id) == untouched
        row = u.session.get(ChainRow, parked.chain_id)
    assert row is not None
    assert row.updated_at == LATER
    assert row.created_at == NOW
    assert row.confirmed == ["insurance", "completion"]


def test_save_clears_dispatched_for(store: RetryStore) -> None:
    (chain,) = inserted(store, new_chain())
    with store.unit() as u:
        u.chains.mark_dispatched([chain.chain_id], SLOT_0840)
    with store.unit() as u:
        sent = u.chains.get(chain.chain_id)
        assert sent is not None and sent.dispatched_for == SLOT_0840
        u.chains.save([chain], LATER)  # dispatched_for None, as given
    with store.unit() as u:
        assert u.chains.get(chain.chain_id) == chain


def test_mark_dispatched_only_for_chains_still_at_that_slot(store: RetryStore) -> None:
    at_slot, elsewhere, moved = inserted(store, new_chain(), new_chain(slot=SLOT_0850), new_chain())
    with store.unit() as u:
        moved_on = replace(moved, cursor=Cursor(Phase.SAME_DAY, 1, SLOT_0850))
        u.chains.save([moved_on], NOW)  # moved on inside this unit
        u.chains.mark_dispatched(
            [at_slot.chain_id, elsewhere.chain_id, moved.chain_id, uuid.uuid4().hex],
            datetime(2026, 11, 26, 23, 40, tzinfo=UTC),  # 08:40 Japan time
        )
        assert u.chains.get(at_slot.chain_id) == replace(at_slot, dispatched_for=SLOT_0840)
    with store.unit() as u:
        after = {c.chain_id: c.dispatched_for for c in u.chains.of_office(None)}
    assert after == {at_slot.chain_id: SLOT_0840, elsewhere.chain_id: None, moved.chain_id: None}


def test_r5_delete_removes_only_those_records(store: RetryStore) -> None:
    gone, kept = inserted(store, new_chain(), new_chain())
    with store.unit() as u:
        u.history.append([line(gone, Event.REPORTED)])
    with store.unit() as u:
        u.chains.delete([gone.chain_id, uuid.uuid4().hex])
        assert u.chains.get(gone.chain_id) is None
    with store.unit() as u:
        assert u.chains.of_office(None) == [kept]
        assert u.chains.of_applications([gone.subject.application], lock=False) == {}
        assert [h.chain_id for h in u.history.lines()] == [gone.chain_id]  # history keeps it
        u.chains.insert([new_chain(gone.subject)], LATER)  # the application may come again


# -- R5: the history -------------------------------------------------------------------------


def test_r5_history_round_trips_a_line(store: RetryStore) -> None:
    chain = new_chain(new_subject("OFFICE-H"))
    entry = HistoryEntry(
        chain_id=chain.chain_id,
        application=chain.subject.application,
        event=Event.ATTEMPT.value,
        attempt_no=3,
        slot=SLOT_0850,
        missing=("safety", "insurance"),
        detail="next 2026-11-27T09:00:00+09:00",
        recorded_at=datetime(2026, 11, 27, 8, 50, 3, 120000, tzinfo=TOKYO),
        office="OFFICE-H",
    )
    bare = HistoryEntry(
        chain_id=chain.chain_id,
        application=chain.subject.application,
        event=Event.REPORTED.value,
        attempt_no=None,
        slot=None,
        missing=(),
        detail="",
        recorded_at=NOW,
        office="OFFICE-H",
    )
    with store.unit() as u:
        u.history.append([entry, bare])
    with store.unit() as u:
        got = u.history.lines()
    assert got == [entry, bare]
    assert got[0].recorded_at.utcoffset() == timedelta(0)


def test_r5_history_lines_in_recording_order_and_filtered(store: RetryStore) -> None:
    a = new_chain(new_subject("OFFICE-A"))
    a2 = new_chain(new_subject("OFFICE-A"))
    b = new_chain(new_subject("OFFICE-B"))
    # Recorded-at instants deliberately out of order: the history follows insertion.
    with store.unit() as u:
        u.history.append(
            [
                line(a, Event.REPORTED, recorded_at=LATER),
                line(b, Event.REPORTED, recorded_at=NOW),
            ]
        )
    with store.unit() as u:
        u.history.append([line(a, Event.PARKED, recorded_at=NOW - timedelta(hours=1))])
        u.history.append([line(a2, Event.REPORTED), line(b, Event.ATTEMPT, attempt_no=1)])
    with store.unit() as u:
        everything = u.history.lines()
        of_a = u.history.lines(application=a.subject.application)
        office_a = u.history.lines(office="OFFICE-A")
        office_b = u.history.lines(office="OFFICE-B")
        a_in_b = u.history.lines(office="OFFICE-B", application=a.subject.application)
        b_in_b = u.history.lines(office="OFFICE-B", application=b.subject.application)
        nobody = u.history.lines(office="OFFICE-Z")
    assert [(h.chain_id, h.event) for h in everything] == [
        (a.chain_id, "reported"),
        (b.chain_id, "reported"),
        (a.chain_id, "parked"),
        (a2.chain_id, "reported"),
        (b.chain_id, "attempt"),
    ]
    assert [h.event for h in of_a] == ["reported", "parked"]
    assert [(h.chain_id, h.event) for h in office_a] == [
        (a.chain_id, "reported"),
        (a.chain_id, "parked"),
        (a2.chain_id, "reported"),
    ]
    assert [h.event for h in office_b] == ["reported", "attempt"]
    assert a_in_b == []
    assert b_in_b == office_b
    assert nobody == []


def test_last_decisions_picks_each_applications_latest_decision(store: RetryStore) -> None:
    twice, once, undecided, other = new_chain(), new_chain(), new_chain(), new_chain()
    again = new_chain(twice.subject)  # a later chain of the same application
    tie = new_chain(once.subject)
    ten = datetime(2026, 11, 27, 10, 0, tzinfo=TOKYO)
    with store.unit() as u:
        u.history.append(
            [
                line(again, Event.AUTO_CORRECTED, slot=ten),  # latest slot, recorded first
                line(twice, Event.RESUMED, slot=SLOT_0850),
                line(once, Event.RESUMED, slot=SLOT_0840),
                line(tie, Event.AUTO_CORRECTED, slot=SLOT_0840),  # same slot: the later line
                line(twice, Event.DUPLICATE, slot=MON_0830),  # not decisions
                line(undecided, Event.REPORTED, slot=MON_0830),
                line(undecided, Event.ATTEMPT, slot=MON_0830, attempt_no=1),
                line(undecided, Event.PARKED, slot=MON_0830),
                line(undecided, Event.MERGED, slot=MON_0830),
                line(undecided, Event.RESUMED, slot=None),  # no decision time
                line(other, Event.RESUMED, slot=SLOT_0900),  # not asked for
            ]
        )
    asked = [
        twice.subject.application,
        once.subject.application,
        undecided.subject.application,
        twice.subject.application,
        new_subject().application,
    ]
    with store.unit() as u:
        decided = u.history.last_decisions(asked)
        assert u.history.last_decisions([]) == {}
    assert decided == {
        twice.subject.application: (again.chain_id, ten),
        once.subject.application: (tie.chain_id, SLOT_0840),
    }
    assert decided[twice.subject.application][1].utcoffset() == timedelta(0)


def test_last_decisions_over_many_applications(store: RetryStore) -> None:
    chains = [new_chain() for _ in range(1100)]
    with store.unit() as u:
        u.history.append([line(c, Event.RESUMED) for c in chains])
    with store.unit() as u:
        decided = u.history.last_decisions([c.subject.application for c in chains])
    assert decided == {c.subject.application: (c.chain_id, SLOT_0840) for c in chains}


# -- DESIGN 5: the outbox ------------------------------------------------------------------------


def test_outbox_add_returns_the_pending_outcomes(store: RetryStore) -> None:
    resumed = new_chain(new_subject("OFFICE-E"))
    corrected = new_chain()
    decided = datetime(2026, 11, 27, 9, 30, tzinfo=TOKYO)
    with store.unit() as u:
        p1, p2 = u.outbox.add(
            [
                ending(resumed, decided_at=decided),
                ending(corrected, Outcome.AUTO_CORRECTED, frozenset({INSURANCE, SAFETY})),
            ],
            NOW,
        )
    assert p1.id < p2.id
    assert p1.chain_id == resumed.chain_id
    assert p1.idempotency_key == f"{resumed.chain_id}:resumed"
    assert p1.idempotency_key == idempotency_key(resumed.chain_id, Outcome.RESUMED)
    assert p1.application == resumed.subject.application
    assert p1.office == "OFFICE-E"
    assert p1.outcome is Outcome.RESUMED
    assert p1.missing == ()
    assert p1.decided_at == decided
    assert p1.send_count == 0
    assert p2.idempotency_key == f"{corrected.chain_id}:auto_corrected"
    assert p2.outcome is Outcome.AUTO_CORRECTED
    assert p2.missing == ("safety", "insurance")  # stable kind order
    with store.unit() as u:
        assert u.outbox.pending(10, resend_before=None) == [p1, p2]
        assert u.outbox.existing([corrected.chain_id, uuid.uuid4().hex]) == {corrected.chain_id}
        assert u.outbox.existing([]) == set()
        assert u.outbox.count_unconfirmed() == 2


@pytest.mark.parametrize("second", [Outcome.RESUMED, Outcome.AUTO_CORRECTED])
def test_r16_one_outcome_per_chain(store: RetryStore, second: Outcome) -> None:
    """DESIGN 5: one chain never ends both ways, nor twice the same way."""
    chain, fresh = new_chain(), new_chain()
    with store.unit() as u:
        (first,) = u.outbox.add([ending(chain)], NOW)
    with store.unit() as u:
        with pytest.raises(DuplicateRecord):
            u.outbox.add([ending(fresh), ending(chain, second, frozenset({SAFETY}))], LATER)
        assert u.outbox.existing([fresh.chain_id]) == set()  # the whole batch was undone
        u.dead_letters.add("t", "the unit goes on", "{}", LATER)
    with store.unit() as u:
        assert u.outbox.pending(10, resend_before=None) == [first]
        assert len(u.dead_letters.newest(10)) == 1
    assert count(store, OutboxRow) == 1


def test_booked_outcomes_wait_for_their_back_off_and_unbook_makes_them_fresh(
    store: RetryStore,
) -> None:
    chains = inserted(store, new_chain(), new_chain(), new_chain())
    until = NOW + timedelta(minutes=20)
    with store.unit() as u:
        booked = u.outbox.add([ending(c) for c in chains], NOW, booked_until=until)
    assert [p.send_count for p in booked] == [0, 0, 0]  # the sends before this one
    with store.unit() as u:
        rows = u.session.scalars(select(OutboxRow).order_by(OutboxRow.id)).all()
        assert [(r.sent_at, r.send_count, r.next_send_at) for r in rows] == [(NOW, 1, until)] * 3
        assert u.outbox.pending(10, resend_before=until - timedelta(seconds=1)) == []
        assert ids_of(u.outbox.pending(10, resend_before=until)) == ids_of(booked)
        # the first send failed for two; the third was sent again since (not taken back)
        u.outbox.mark_sent([booked[2].id], LATER)
        u.outbox.unbook([p.id for p in booked])
        assert ids_of(u.outbox.pending(10, resend_before=None)) == ids_of(booked[:2])
        rows = u.session.execute(
            select(OutboxRow.sent_at, OutboxRow.send_count).order_by(OutboxRow.id)
        ).all()
        assert [tuple(r) for r in rows] == [(None, 0), (None, 0), (LATER, 2)]
        u.outbox.unbook([])
        # a send that raised after the broker took it, and was confirmed at once
        (late,) = u.outbox.add([ending(new_chain())], NOW, booked_until=until)
        assert u.outbox.confirm(late.idempotency_key, LATER)
        u.outbox.unbook([late.id])
        row = u.session.execute(
            select(OutboxRow.sent_at, OutboxRow.send_count).where(OutboxRow.id == late.id)
        ).one()
        assert tuple(row) == (NOW, 1)  # left as it was


def test_outbox_pending_mark_sent_and_resend(store: RetryStore) -> None:
    chains = [new_chain() for _ in range(4)]
    with store.unit() as u:
        p1, p2, p3, p4 = u.outbox.add([ending(c) for c in chains], NOW)
    sent_at = datetime(2026, 11, 27, 8, 37, tzinfo=TOKYO)
    with store.unit() as u:
        assert u.outbox.pending(2, resend_before=None) == [p1, p2]  # oldest first
        u.outbox.mark_sent([p2.id, p3.id], sent_at)
    with store.unit() as u:
        assert u.outbox.pending(10, resend_before=None) == [p1, p4]  # never sent
        before = sent_at - timedelta(microseconds=1)
        assert ids_of(u.outbox.pending(10, resend_before=before)) == [p1.id, p4.id]
        # The fair relay: never-sent first, then re-sends due by then (inclusive).
        resend = u.outbox.pending(10, resend_before=sent_at)
        assert ids_of(resend) == [p1.id, p4.id, p2.id, p3.id]
        assert resend[2].send_count == 1
        row = u.session.get(OutboxRow, p2.id)
        assert row is not None and row.sent_at == sent_at
    with store.unit() as u:
        u.outbox.mark_sent([p2.id], sent_at + timedelta(minutes=1))  # at least once: counts
    with store.unit() as u:
        (again,) = [p for p in u.outbox.pending(10, resend_before=LATER) if p.id == p2.id]
    assert again.send_count == 2


def test_outbox_confirm_ends_the_resends(store: RetryStore) -> None:
    one, two = new_chain(), new_chain()
    with store.unit() as u:
        p1, p2 = u.outbox.add([ending(one), ending(two, Outcome.AUTO_CORRECTED)], NOW)
        u.outbox.mark_sent([p1.id, p2.id], NOW)
    confirmed_at = datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO)
    with store.unit() as u:
        assert u.outbox.confirm(p1.idempotency_key, confirmed_at) is True
        assert u.outbox.confirm(f"{uuid.uuid4().hex}:resumed", confirmed_at) is False
        assert u.outbox.confirm(f"{two.chain_id}:resumed", confirmed_at) is False  # wrong way
    with store.unit() as u:
        assert u.outbox.confirm(p1.idempotency_key, LATER) is True  # again: still known
        assert u.outbox.count_unconfirmed() == 1
        assert ids_of(u.outbox.pending(10, resend_before=MON_0830)) == [p2.id]


def test_outbox_confirm_stores_the_first_confirmation_instant(store: RetryStore) -> None:
    chain = new_chain()
    with store.unit() as u:
        (pending,) = u.outbox.add([ending(chain)], NOW)
    confirmed_at = datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO)  # 23:38 UTC the day before
    with store.unit() as u:
        assert u.outbox.confirm(pending.idempotency_key, confirmed_at)
    with store.unit() as u:
        assert u.outbox.confirm(pending.idempotency_key, LATER)
    with store.engine.connect() as conn:
        stored = conn.execute(
            text("select confirmed_at from outbox where id = :i"), {"i": pending.id}
        ).scalar_one()
    with store.unit() as u:
        row = u.session.get(OutboxRow, pending.id)
    assert row is not None
    assert str(stored).startswith("2026-11-26 23:38:00")  # naive UTC, like every instant
    assert row.confirmed_at == confirmed_at  # the first confirmation stays


# -- R10: close signals ------------------------------------------------------------------------


def test_r10_close_signals_by_japan_day(store: RetryStore) -> None:
    monday_1045 = datetime(2026, 11, 30, 10, 45, tzinfo=TOKYO)
    # 2026-11-30 15:15 UTC is already Tuesday 00:15 in Japan.
    tuesday_0015 = datetime(2026, 11, 30, 15, 15, tzinfo=UTC)
    # 2026-11-27 14:59 UTC is still Friday 23:59 in Japan.
    friday_2359 = datetime(2026, 11, 27, 14, 59, tzinfo=UTC)
    friday_1400 = datetime(2026, 11, 27, 14, 0, tzinfo=TOKYO)
    with store.unit() as u:
        u.signals.add(monday_1045, NOW)
        u.signals.add(tuesday_0015, NOW)
        u.signals.add(friday_2359, NOW)
        u.signals.add(friday_1400, NOW)
    with store.unit() as u:
        monday = u.signals.between(date(2026, 11, 30), date(2026, 11, 30))
        tuesday = u.signals.between(date(2026, 12, 1), date(2026, 12, 1))
        friday = u.signals.between(date(2026, 11, 27), date(2026, 11, 27))
        week = u.signals.between(date(2026, 11, 27), date(2026, 12, 1))
        weekend = u.signals.between(date(2026, 11, 28), date(2026, 11, 29))
    assert monday == [monday_1045]
    assert tuesday == [tuesday_0015]
    assert friday == [friday_1400, friday_2359]
    assert week == [friday_1400, friday_2359, monday_1045, tuesday_0015]
    assert weekend == []
    assert all(s.utcoffset() == timedelta(0) for s in week)


# -- dead letters --------------------------------------------------------------------------------


def test_dead_letters_newest_first(store: RetryStore) -> None:
    received = [datetime(2026, 11, 27, 8, 40, s, tzinfo=TOKYO) for s in range(3)]
    body = '{"application": "申請-1", "raw": "\\u0000 kept as sent"}'
    with store.unit() as u:
        first = u.dead_letters.add("retry_pipeline.report", "not JSON", "{{{", received[0])
        second = u.dead_letters.add("retry_pipeline.report", "x" * 2500, body, received[1])
    with store.unit() as u:
        third = u.dead_letters.add("retry_pipeline.confirm_outcome", "unknown", "", received[2])
    assert first < second < third
    with store.unit() as u:
        newest = u.dead_letters.newest(10)
        two = u.dead_letters.newest(2)
    assert [d.id for d in newest] == [third, second, first]
    assert two == newest[:2]
    assert newest[1].task == "retry_pipeline.report"
    assert newest[1].reason == "x" * 2000  # capped to the column
    assert newest[1].payload == body  # the raw body, byte for byte
    assert newest[1].received_at == received[1]
    assert newest[2].payload == "{{{"
    assert newest[0].task == "retry_pipeline.confirm_outcome"


# -- storage: instants are UTC, read back aware -------------------------------------------------


def test_instants_round_trip_as_aware_utc(store: RetryStore) -> None:
    detected = datetime(2026, 11, 27, 8, 36, 12, 345678, tzinfo=TOKYO)
    chain = new_chain(detected_at=detected)
    with store.unit() as u:
        u.chains.insert([chain], detected)
    with store.unit() as u:
        got = u.chains.get(chain.chain_id)
        row = u.session.get(ChainRow, chain.chain_id)
    assert got is not None and row is not None
    for value in (got.detected_at, row.detected_at, row.created_at):
        assert value == detected
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
    assert row.detected_at.replace(tzinfo=None) == datetime(2026, 11, 26, 23, 36, 12, 345678)
    assert row.next_slot == SLOT_0840


def test_stored_instants_are_naive_utc_in_the_database(store: RetryStore) -> None:
    (chain,) = inserted(store, new_chain())
    with store.engine.connect() as conn:
        stored = conn.execute(
            text("select detected_at, next_slot from retry_chain where chain_id = :c"),
            {"c": chain.chain_id},
        ).one()
    # SQLite hands back text, PostgreSQL a naive timestamp; both say 23:36 UTC the day before.
    assert str(stored[0]).startswith("2026-11-26 23:36:00")
    assert str(stored[1]).startswith("2026-11-26 23:40:00")


def test_naive_instants_are_refused(store: RetryStore) -> None:
    chain = new_chain(detected_at=datetime(2026, 11, 27, 8, 36))
    with pytest.raises(StatementError, match="naive datetime"), store.unit() as u:
        u.chains.insert([chain], NOW)
    with pytest.raises(StatementError, match="naive datetime"), store.unit() as u:
        u.signals.add(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO), datetime(2026, 11, 27, 9, 0))
        u.session.flush()
    assert count(store, ChainRow) == 0
    assert count(store, HistoryRow) == 0
