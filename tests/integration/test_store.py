"""The retry table's store (R4, R5, R10, R15) against a real SQLite file and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from retry_pipeline.adapters.orm import ChainRow, HistoryRow, OutboxRow
from retry_pipeline.adapters.outbox import idempotency_key
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.errors import StoreError
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    Outcome,
    Procedure,
    Report,
)
from retry_pipeline.policy import Cursor, Phase, advance_chain, start_chain
from simulation.queries import count_live

TOKYO = ZoneInfo("Asia/Tokyo")
SAFETY = CertificateKind.SAFETY
INSURANCE = CertificateKind.INSURANCE

# SPEC worked example: Fri 2026-11-27, found missing at 08:36, first attempt 08:40 (R7, R9).
DETECTED = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
NOW = datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO)


def jst(month: int, day: int, hour: int, minute: int) -> pendulum.DateTime:
    return pendulum.datetime(2026, month, day, hour, minute, tz="Asia/Tokyo")


SLOT_0840 = jst(11, 27, 8, 40)
SLOT_0850 = jst(11, 27, 8, 50)
MON_0830 = jst(11, 30, 8, 30)
FIRST = Cursor(Phase.SAME_DAY, 0, SLOT_0840)


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


def report_of(
    subject: Application,
    missing: set[CertificateKind],
    confirmed: set[CertificateKind] | None = None,
    detected_at: datetime = DETECTED,
) -> Report:
    return Report(subject, frozenset(missing), frozenset(confirmed or set()), detected_at)


def record(
    store: RetryStore,
    subject: Application,
    missing: set[CertificateKind],
    cursor: Cursor = FIRST,
    confirmed: set[CertificateKind] | None = None,
) -> Chain:
    with store.unit() as u:
        rec = u.record_report(report_of(subject, missing, confirmed), cursor, NOW)
    assert rec.created
    return rec.chain


def events(store: RetryStore, application: str) -> list[str]:
    with store.unit() as u:
        return [h.event for h in u.history(application=application)]


def outbox_count(store: RetryStore, chain_id: str) -> int:
    with store.unit() as u:
        n = u.session.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.chain_id == chain_id)
        )
    return int(n or 0)


# -- R4: one record per application ---------------------------------------------------


def test_r4_report_creates_one_chain_with_reported_history(
    store: RetryStore, calendar: BusinessCalendar
) -> None:
    subject = new_subject()
    cursor = start_chain(DETECTED, calendar)
    assert cursor == FIRST  # R7: first grid slot strictly after 08:36
    with store.unit() as u:
        rec = u.record_report(report_of(subject, {SAFETY, INSURANCE}), cursor, NOW)
    assert rec.created is True
    assert rec.added == frozenset({SAFETY, INSURANCE})
    chain = rec.chain
    assert len(chain.chain_id) == 32
    assert chain.subject == subject
    assert chain.missing == frozenset({SAFETY, INSURANCE})
    assert chain.found == frozenset()
    assert chain.confirmed == frozenset()
    assert chain.detected_at == DETECTED
    assert chain.attempts_made == 0
    assert chain.next_attempt_no == 1
    assert chain.cursor == FIRST
    assert chain.version == 1
    with store.unit() as u:
        assert u.find_chain(subject.application) == chain
        assert u.get_chain(chain.chain_id) == chain
        assert count_live(u.session) == 1
        (entry,) = u.history(application=subject.application)
    assert entry.event == "reported"
    assert entry.chain_id == chain.chain_id
    assert entry.attempt_no is None
    assert entry.slot == SLOT_0840
    assert entry.missing == ("safety", "insurance")  # stable kind order
    assert entry.recorded_at == NOW


def test_r4_second_report_merges_missing_into_the_same_chain(store: RetryStore) -> None:
    subject = new_subject()
    first = record(store, subject, {SAFETY})
    later = Cursor(Phase.SAME_DAY, 0, SLOT_0850)  # the second report's own plan is ignored
    with store.unit() as u:
        rec = u.record_report(
            report_of(subject, {SAFETY, INSURANCE}, detected_at=DETECTED + timedelta(minutes=5)),
            later,
            NOW + timedelta(minutes=5),
        )
    assert rec.created is False
    assert rec.added == frozenset({INSURANCE})
    assert rec.chain.chain_id == first.chain_id
    assert rec.chain.missing == frozenset({SAFETY, INSURANCE})
    assert rec.chain.cursor == FIRST  # R4: a merge does not restart the chain
    assert rec.chain.detected_at == DETECTED
    assert rec.chain.version == first.version + 1
    with store.unit() as u:
        assert count_live(u.session) == 1
        assert u.get_chain(first.chain_id) == rec.chain
        history = u.history(application=subject.application)
    assert [h.event for h in history] == ["reported", "merged"]
    assert {h.chain_id for h in history} == {first.chain_id}
    assert history[1].detail == "added insurance"
    assert history[1].missing == ("safety", "insurance")


def test_r4_merge_unions_confirmed(store: RetryStore) -> None:
    subject = new_subject()
    record(store, subject, {SAFETY})
    with store.unit() as u:
        rec = u.record_report(report_of(subject, {SAFETY}, confirmed={INSURANCE}), FIRST, NOW)
    assert rec.chain.confirmed == frozenset({INSURANCE})  # R3 needs every earlier finding
    assert rec.added == frozenset()


def test_r4_merge_of_already_missing_kind_adds_nothing(store: RetryStore) -> None:
    subject = new_subject()
    first = record(store, subject, {SAFETY, INSURANCE})
    with store.unit() as u:
        rec = u.record_report(report_of(subject, {INSURANCE}), FIRST, NOW)
    assert rec.created is False
    assert rec.added == frozenset()
    assert rec.chain.chain_id == first.chain_id
    assert rec.chain.missing == frozenset({SAFETY, INSURANCE})
    assert rec.chain.attempts_made == 0
    with store.unit() as u:
        assert count_live(u.session) == 1
        history = u.history(application=subject.application)
    assert [h.event for h in history] == ["reported", "merged"]
    assert history[1].detail == "added nothing"


def test_r4_two_reports_in_one_unit_give_one_chain(store: RetryStore) -> None:
    subject = new_subject()
    with store.unit() as u:
        a = u.record_report(report_of(subject, {SAFETY}), FIRST, NOW)
        b = u.record_report(report_of(subject, {INSURANCE}), FIRST, NOW)
        assert b.chain.missing == frozenset({SAFETY, INSURANCE})
        assert b.chain.version == 2
    assert (a.created, b.created) == (True, False)
    assert a.chain.chain_id == b.chain.chain_id
    assert events(store, subject.application) == ["reported", "merged"]


def test_r4_other_applications_get_their_own_chains(store: RetryStore) -> None:
    one, two = new_subject(), new_subject()
    a = record(store, one, {SAFETY})
    b = record(store, two, {SAFETY})
    assert a.chain_id != b.chain_id
    with store.unit() as u:
        assert count_live(u.session) == 2


def _wait_for_lock_waiter(store: RetryStore, deadline_s: float = 10.0) -> None:
    """PostgreSQL: poll until some session of this database waits on a lock."""
    probe = RetryStore.from_url(store.engine.url.render_as_string(hide_password=False))
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with probe.engine.connect() as conn:
                waiting = conn.execute(
                    text(
                        "select count(*) from pg_stat_activity "
                        "where datname = current_database() and wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            if waiting:
                return
            time.sleep(0.02)
        pytest.fail("the second report never waited on the first one's insert")
    finally:
        probe.engine.dispose()


def test_r4_concurrent_report_waiting_on_uncommitted_insert_merges(store: RetryStore) -> None:
    """R4: report B arrives while report A's insert is not committed yet; still one chain."""
    subject = new_subject()
    results: dict[str, object] = {}

    def second() -> None:
        try:
            with store.unit() as u:
                results["b"] = u.record_report(report_of(subject, {INSURANCE}), FIRST, NOW)
        except Exception as exc:  # surfaced by the assertions below
            results["error"] = exc

    with store.unit() as u:
        a = u.record_report(report_of(subject, {SAFETY}), FIRST, NOW)
        worker = threading.Thread(target=second)
        worker.start()
        if store.engine.dialect.name == "postgresql":
            _wait_for_lock_waiter(store)  # B sits on the unique index behind A
        else:
            worker.join(timeout=0.3)  # BEGIN IMMEDIATE: B waits for A's write lock
            assert worker.is_alive()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert "error" not in results, results.get("error")
    b = results["b"]
    assert a.created is True
    assert b.created is False  # type: ignore[attr-defined]
    assert b.chain.chain_id == a.chain.chain_id  # type: ignore[attr-defined]
    assert b.added == frozenset({INSURANCE})  # type: ignore[attr-defined]
    with store.unit() as u:
        assert count_live(u.session) == 1
        chain = u.find_chain(subject.application)
    assert chain is not None
    assert chain.missing == frozenset({SAFETY, INSURANCE})
    assert events(store, subject.application) == ["reported", "merged"]


def test_r4_many_concurrent_duplicate_reports_give_one_chain(store: RetryStore) -> None:
    subject = new_subject()
    n = 6
    barrier = threading.Barrier(n, timeout=10)
    created: list[bool] = []
    chain_ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def report(i: int) -> None:
        kind = SAFETY if i % 2 == 0 else INSURANCE
        try:
            with store.unit() as u:
                barrier.wait()
                rec = u.record_report(report_of(subject, {kind}), FIRST, NOW)
            with lock:
                created.append(rec.created)
                chain_ids.append(rec.chain.chain_id)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=report, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(created) == [False] * (n - 1) + [True]
    assert len(set(chain_ids)) == 1
    with store.unit() as u:
        assert count_live(u.session) == 1
        chain = u.find_chain(subject.application)
        history = u.history(application=subject.application)
    assert chain is not None
    assert chain.missing == frozenset({SAFETY, INSURANCE})
    assert chain.version == n
    assert sorted(h.event for h in history) == ["merged"] * (n - 1) + ["reported"]
    assert history[0].event == "reported"


# -- DESIGN 3: attempts are claimed once ------------------------------------------------


def test_claim_expected_attempt_succeeds_once(store: RetryStore) -> None:
    chain = record(store, new_subject(), {SAFETY})
    claim_at = datetime(2026, 11, 27, 8, 40, 2, tzinfo=TOKYO)
    with store.unit() as u:
        claimed = u.claim_attempt(chain.chain_id, 1, SLOT_0840, claim_at)
    assert claimed is not None
    assert claimed.chain_id == chain.chain_id
    assert claimed.attempts_made == 1
    assert claimed.version == chain.version + 1
    assert claimed.cursor == chain.cursor  # the slot moves only with advance
    with store.unit() as u:
        assert u.claim_attempt(chain.chain_id, 1, SLOT_0840, claim_at) is None  # duplicate
        stored = u.get_chain(chain.chain_id)
    assert stored == claimed


def test_claim_matches_the_slot_as_an_instant_not_its_zone(store: RetryStore) -> None:
    chain = record(store, new_subject(), {SAFETY})
    slot_utc = datetime(2026, 11, 26, 23, 40, tzinfo=UTC)  # 08:40 Japan time
    with store.unit() as u:
        assert u.claim_attempt(chain.chain_id, 1, slot_utc, NOW) is not None


@pytest.mark.parametrize(
    ("attempt_no", "slot"),
    [
        pytest.param(2, SLOT_0840, id="attempt-ahead"),
        pytest.param(0, SLOT_0840, id="attempt-behind"),
        pytest.param(1, SLOT_0850, id="wrong-slot"),
        pytest.param(1, SLOT_0840.add(seconds=1), id="slot-off-by-a-second"),
    ],
)
def test_claim_of_unexpected_attempt_is_refused(
    store: RetryStore, attempt_no: int, slot: pendulum.DateTime
) -> None:
    chain = record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        assert u.claim_attempt(chain.chain_id, attempt_no, slot, NOW) is None
        assert u.get_chain(chain.chain_id) == chain  # untouched


def test_claim_of_unknown_chain_is_refused(store: RetryStore) -> None:
    record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        assert u.claim_attempt(uuid.uuid4().hex, 1, SLOT_0840, NOW) is None


def test_stale_attempt_after_advance_is_refused(
    store: RetryStore, calendar: BusinessCalendar
) -> None:
    chain = record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        claimed = u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW)
        assert claimed is not None
        nxt = advance_chain(claimed.cursor, calendar)
        assert nxt is not None
        u.advance(
            claimed, nxt, missing=frozenset({SAFETY}), found=frozenset(), slot=SLOT_0840, now=NOW
        )
    with store.unit() as u:
        # A late redelivery of attempt 1, in either form, does nothing.
        assert u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW) is None
        assert u.claim_attempt(chain.chain_id, 1, SLOT_0850, NOW) is None
        assert u.claim_attempt(chain.chain_id, 2, SLOT_0840, NOW) is None
        second = u.claim_attempt(chain.chain_id, 2, SLOT_0850, NOW)
    assert second is not None
    assert second.attempts_made == 2


def test_claim_in_a_failed_unit_is_rolled_back(store: RetryStore) -> None:
    chain = record(store, new_subject(), {SAFETY})
    with pytest.raises(RuntimeError, match="worker died"), store.unit() as u:
        assert u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW) is not None
        raise RuntimeError("worker died")
    with store.unit() as u:
        assert u.get_chain(chain.chain_id) == chain  # attempts_made 0, version 1
        again = u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW)
    assert again is not None
    assert again.attempts_made == 1


# -- R5: every attempt and park in the history ---------------------------------------------


def test_r5_advance_sets_next_cursor_and_logs_attempt(
    store: RetryStore, calendar: BusinessCalendar
) -> None:
    subject = new_subject()
    chain = record(store, subject, {SAFETY, INSURANCE})
    checked_at = datetime(2026, 11, 27, 8, 40, 3, tzinfo=TOKYO)
    with store.unit() as u:
        claimed = u.claim_attempt(chain.chain_id, 1, SLOT_0840, checked_at)
        assert claimed is not None
        nxt = advance_chain(claimed.cursor, calendar)
        assert nxt == Cursor(Phase.SAME_DAY, 1, SLOT_0850)
        advanced = u.advance(
            claimed,
            nxt,
            missing=frozenset({SAFETY}),
            found=frozenset({INSURANCE}),
            slot=SLOT_0840,
            now=checked_at,
        )
    assert advanced.cursor == nxt
    assert advanced.missing == frozenset({SAFETY})
    assert advanced.found == frozenset({INSURANCE})
    assert advanced.attempts_made == 1
    assert advanced.next_attempt_no == 2
    assert advanced.version == claimed.version + 1
    with store.unit() as u:
        assert u.get_chain(chain.chain_id) == advanced
        history = u.history(application=subject.application)
    assert [h.event for h in history] == ["reported", "attempt"]
    attempt = history[1]
    assert attempt.attempt_no == 1
    assert attempt.slot == SLOT_0840
    assert attempt.missing == ("safety",)
    assert attempt.recorded_at == checked_at
    assert "2026-11-27T08:50:00+09:00" in attempt.detail
    assert "parked" not in attempt.detail


def test_r10_advance_into_the_next_day_notes_the_park(store: RetryStore) -> None:
    subject = new_subject()
    slot_1550 = jst(11, 27, 15, 50)
    chain = record(store, subject, {SAFETY}, cursor=Cursor(Phase.SAME_DAY, 2, slot_1550))
    parked = Cursor(Phase.NEXT_DAY, 0, MON_0830)
    with store.unit() as u:
        claimed = u.claim_attempt(chain.chain_id, 1, slot_1550, NOW)
        assert claimed is not None
        advanced = u.advance(
            claimed, parked, missing=frozenset({SAFETY}), found=frozenset(), slot=slot_1550, now=NOW
        )
    assert advanced.cursor == parked
    assert advanced.cursor.parked
    with store.unit() as u:
        last = u.history(application=subject.application)[-1]
    assert last.event == "attempt"
    assert "(parked, R10)" in last.detail


def test_advance_with_a_stale_chain_raises(store: RetryStore) -> None:
    chain = record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        assert u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW) is not None
    with pytest.raises(StoreError), store.unit() as u:
        u.advance(
            chain,  # version 1, the claim made it 2
            Cursor(Phase.SAME_DAY, 1, SLOT_0850),
            missing=frozenset({SAFETY}),
            found=frozenset(),
            slot=SLOT_0840,
            now=NOW,
        )


def test_r10_reschedule_parks_and_logs_parked(store: RetryStore) -> None:
    subject = new_subject()
    chain = record(store, subject, {SAFETY, INSURANCE})
    parked = Cursor(Phase.NEXT_DAY, 0, MON_0830)
    closed_at = datetime(2026, 11, 27, 16, 0, tzinfo=TOKYO)
    with store.unit() as u:
        moved = u.reschedule(chain, parked, closed_at, "R10: OSS close")
    assert moved.cursor == parked
    assert moved.cursor.parked
    assert moved.attempts_made == chain.attempts_made
    assert moved.missing == chain.missing
    assert moved.version == chain.version + 1
    with store.unit() as u:
        assert u.get_chain(chain.chain_id) == moved
        last = u.history(application=subject.application)[-1]
    assert last.event == "parked"
    assert last.slot == MON_0830
    assert last.detail == "R10: OSS close"
    assert last.missing == ("safety", "insurance")
    assert last.attempt_no is None
    assert last.recorded_at == closed_at


def test_mark_dispatched_only_for_the_current_slot(store: RetryStore) -> None:
    chain = record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        assert u.mark_dispatched(chain.chain_id, SLOT_0850) is False
        assert u.mark_dispatched(chain.chain_id, SLOT_0840) is True
        row = u.session.get(ChainRow, chain.chain_id)
        assert row is not None
        assert row.dispatched_for == SLOT_0840


# -- R5 / DESIGN 5: ending is one transaction -----------------------------------------------


def test_r5_end_chain_deletes_record_logs_and_writes_outbox(store: RetryStore) -> None:
    subject = new_subject("OFFICE-E")
    chain = record(store, subject, {SAFETY, INSURANCE})
    decided = datetime(2026, 11, 27, 9, 30, tzinfo=TOKYO)
    now = datetime(2026, 11, 27, 9, 30, 4, tzinfo=TOKYO)
    with store.unit() as u:
        pending = u.end_chain(
            chain,
            Outcome.AUTO_CORRECTED,
            missing=frozenset({SAFETY}),
            decided_at=decided,
            now=now,
            detail="R8: still missing after attempt 6",
        )
    assert pending.chain_id == chain.chain_id
    assert pending.idempotency_key == f"{chain.chain_id}:{Outcome.AUTO_CORRECTED}"
    assert pending.idempotency_key == f"{chain.chain_id}:auto_corrected"
    assert pending.idempotency_key == idempotency_key(chain.chain_id, Outcome.AUTO_CORRECTED)
    assert pending.outcome is Outcome.AUTO_CORRECTED
    assert pending.application == subject.application
    assert pending.office == "OFFICE-E"
    assert pending.missing == ("safety",)
    assert pending.decided_at == decided
    assert pending.send_count == 0
    with store.unit() as u:
        assert u.get_chain(chain.chain_id) is None
        assert u.find_chain(subject.application) is None
        assert count_live(u.session) == 0
        assert u.pending_outcomes() == [pending]
        history = u.history(application=subject.application)
    assert [h.event for h in history] == ["reported", "auto_corrected"]
    ending = history[-1]
    assert ending.chain_id == chain.chain_id
    assert ending.attempt_no is None  # decided without an attempt (R3)
    assert ending.slot == decided
    assert ending.missing == ("safety",)
    assert ending.detail == "R8: still missing after attempt 6"
    assert ending.recorded_at == now


def test_r5_resume_after_attempt_logs_attempt_number(store: RetryStore) -> None:
    subject = new_subject()
    chain = record(store, subject, {SAFETY})
    with store.unit() as u:
        claimed = u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW)
        assert claimed is not None
        assert claimed.attempts_made == 1
        pending = u.end_chain(
            claimed,
            Outcome.RESUMED,
            missing=frozenset(),
            decided_at=SLOT_0840,
            now=NOW,
            attempt_no=claimed.attempts_made,
        )
    assert pending.idempotency_key == f"{chain.chain_id}:resumed"
    assert pending.missing == ()
    with store.unit() as u:
        ending = u.history(application=subject.application)[-1]
    assert ending.event == "resumed"
    assert ending.attempt_no == 1


def test_r5_end_chain_rolled_back_with_its_unit(store: RetryStore) -> None:
    subject = new_subject()
    chain = record(store, subject, {SAFETY})
    with pytest.raises(RuntimeError, match="relay crashed"), store.unit() as u:
        u.end_chain(
            chain, Outcome.AUTO_CORRECTED, missing=frozenset({SAFETY}), decided_at=NOW, now=NOW
        )
        assert u.get_chain(chain.chain_id) is None  # gone inside the unit...
        raise RuntimeError("relay crashed")
    with store.unit() as u:
        assert u.get_chain(chain.chain_id) == chain  # ...but live and unchanged after it
        assert u.pending_outcomes() == []
    assert outbox_count(store, chain.chain_id) == 0
    assert events(store, subject.application) == ["reported"]


def test_r16_ending_twice_raises_and_keeps_one_ending(store: RetryStore) -> None:
    subject = new_subject()
    chain = record(store, subject, {SAFETY})
    with store.unit() as u:
        u.end_chain(chain, Outcome.RESUMED, missing=frozenset(), decided_at=NOW, now=NOW)
    with pytest.raises(StoreError), store.unit() as u:
        u.end_chain(
            chain, Outcome.AUTO_CORRECTED, missing=frozenset({SAFETY}), decided_at=NOW, now=NOW
        )
    assert outbox_count(store, chain.chain_id) == 1
    assert events(store, subject.application) == ["reported", "resumed"]


def test_end_chain_with_a_changed_chain_raises_and_keeps_it_live(store: RetryStore) -> None:
    chain = record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        claimed = u.claim_attempt(chain.chain_id, 1, SLOT_0840, NOW)
    with pytest.raises(StoreError), store.unit() as u:
        u.end_chain(chain, Outcome.RESUMED, missing=frozenset(), decided_at=NOW, now=NOW)
    with store.unit() as u:
        assert u.get_chain(chain.chain_id) == claimed
    assert outbox_count(store, chain.chain_id) == 0


@pytest.mark.parametrize("second", [Outcome.RESUMED, Outcome.AUTO_CORRECTED])
def test_one_ending_per_chain_in_the_outbox(store: RetryStore, second: Outcome) -> None:
    """DESIGN 5: one chain never ends both ways, nor twice the same way."""
    subject = new_subject()
    chain = record(store, subject, {SAFETY})
    with store.unit() as u:
        u.end_chain(chain, Outcome.RESUMED, missing=frozenset(), decided_at=NOW, now=NOW)
    with pytest.raises(IntegrityError), store.unit() as u:
        u.add_outcome(
            chain.chain_id, subject, second, missing=frozenset({SAFETY}), decided_at=NOW, now=NOW
        )
    assert outbox_count(store, chain.chain_id) == 1


# -- DESIGN 5: the outbox ------------------------------------------------------------------


def test_pending_outcomes_oldest_first_and_mark_sent(store: RetryStore) -> None:
    first = record(store, new_subject(), {SAFETY})
    second = record(store, new_subject(), {INSURANCE})
    third = record(store, new_subject(), {SAFETY})
    with store.unit() as u:
        p1 = u.end_chain(first, Outcome.RESUMED, missing=frozenset(), decided_at=NOW, now=NOW)
    with store.unit() as u:
        p2 = u.end_chain(
            second, Outcome.AUTO_CORRECTED, missing=frozenset({INSURANCE}), decided_at=NOW, now=NOW
        )
        p3 = u.end_chain(third, Outcome.RESUMED, missing=frozenset(), decided_at=NOW, now=NOW)
    assert p1.id < p2.id < p3.id
    sent_at = datetime(2026, 11, 27, 8, 37, tzinfo=TOKYO)
    with store.unit() as u:
        assert [p.chain_id for p in u.pending_outcomes()] == [
            first.chain_id,
            second.chain_id,
            third.chain_id,
        ]
        assert u.pending_outcomes(limit=2) == [p1, p2]
        u.mark_sent(p2.id, sent_at)
    with store.unit() as u:
        assert u.pending_outcomes() == [p1, p3]
        row = u.session.get(OutboxRow, p2.id)
        assert row is not None
        assert row.sent_at == sent_at
        assert row.send_count == 1
    with store.unit() as u:
        u.mark_sent(p2.id, sent_at + timedelta(minutes=1))  # at least once: a resend counts
        u.mark_sent(p1.id, sent_at)
        u.mark_sent(p3.id, sent_at)
    with store.unit() as u:
        assert u.pending_outcomes() == []
        row = u.session.get(OutboxRow, p2.id)
        assert row is not None
        assert row.send_count == 2


# -- R10: close signals ---------------------------------------------------------------------


def test_r10_close_signals_by_japan_day(store: RetryStore) -> None:
    monday_1045 = datetime(2026, 11, 30, 10, 45, tzinfo=TOKYO)
    # 2026-11-30 15:15 UTC is already Tuesday 00:15 in Japan.
    tuesday_0015 = datetime(2026, 11, 30, 15, 15, tzinfo=UTC)
    friday_1400 = datetime(2026, 11, 27, 14, 0, tzinfo=TOKYO)
    with store.unit() as u:
        u.add_close_signal(monday_1045, NOW)
        u.add_close_signal(tuesday_0015, NOW)
        u.add_close_signal(friday_1400, NOW)
    with store.unit() as u:
        monday = u.close_signals(date(2026, 11, 30), date(2026, 11, 30))
        tuesday = u.close_signals(date(2026, 12, 1), date(2026, 12, 1))
        week = u.close_signals(date(2026, 11, 27), date(2026, 12, 1))
        none = u.close_signals(date(2026, 11, 28), date(2026, 11, 29))
    assert monday == [monday_1045]
    assert tuesday == [tuesday_0015]
    assert week == [friday_1400, monday_1045, tuesday_0015]
    assert none == []
    assert all(s.utcoffset() == timedelta(0) for s in week)


# -- R15: an office sees its own applications -------------------------------------------------


def test_r15_chains_of_office_only_that_office(store: RetryStore) -> None:
    a_late = new_subject("OFFICE-A")
    a_early = new_subject("OFFICE-A")
    b = new_subject("OFFICE-B")
    with store.unit() as u:
        u.record_report(
            report_of(a_late, {SAFETY}, detected_at=datetime(2026, 11, 27, 9, 5, tzinfo=TOKYO)),
            Cursor(Phase.SAME_DAY, 0, jst(11, 27, 9, 10)),
            NOW,
        )
        u.record_report(report_of(b, {INSURANCE}), FIRST, NOW)
        u.record_report(report_of(a_early, {SAFETY}), FIRST, NOW)
    with store.unit() as u:
        office_a = u.chains_of_office("OFFICE-A")
        office_b = u.chains_of_office("OFFICE-B")
        a_one = u.chains_of_office("OFFICE-A", application=a_late.application)
        a_asks_b = u.chains_of_office("OFFICE-A", application=b.application)
        unknown = u.chains_of_office("OFFICE-Z")
    assert [c.subject.application for c in office_a] == [a_early.application, a_late.application]
    assert [c.subject.application for c in office_b] == [b.application]
    assert [c.subject.application for c in a_one] == [a_late.application]
    assert a_asks_b == []
    assert unknown == []


def test_r15_history_filtered_by_office_and_application(store: RetryStore) -> None:
    a = new_subject("OFFICE-A")
    b = new_subject("OFFICE-B")
    chain_a = record(store, a, {SAFETY})
    record(store, b, {INSURANCE})
    with store.unit() as u:
        u.reschedule(chain_a, Cursor(Phase.NEXT_DAY, 0, MON_0830), NOW, "R10")
    with store.unit() as u:
        of_a = u.history(office="OFFICE-A")
        of_b = u.history(office="OFFICE-B")
        a_in_b = u.history(office="OFFICE-B", application=a.application)
        everything = u.history()
    assert [(h.application, h.event) for h in of_a] == [
        (a.application, "reported"),
        (a.application, "parked"),
    ]
    assert [(h.application, h.event) for h in of_b] == [(b.application, "reported")]
    assert a_in_b == []
    assert len(everything) == 3


def test_r5_history_is_in_recording_order(store: RetryStore, calendar: BusinessCalendar) -> None:
    one, two = new_subject(), new_subject()
    c1 = record(store, one, {SAFETY})
    c2 = record(store, two, {SAFETY})
    # Recorded-at instants deliberately out of order: the history follows insertion.
    with store.unit() as u:
        claimed = u.claim_attempt(c2.chain_id, 1, SLOT_0840, NOW)
        assert claimed is not None
        nxt = advance_chain(claimed.cursor, calendar)
        assert nxt is not None
        u.advance(
            claimed, nxt, missing=frozenset({SAFETY}), found=frozenset(), slot=SLOT_0840, now=NOW
        )
    with store.unit() as u:
        u.end_chain(
            c1,
            Outcome.RESUMED,
            missing=frozenset(),
            decided_at=NOW,
            now=NOW - timedelta(hours=1),
        )
    with store.unit() as u:
        everything = u.history()
        of_two = u.history(application=two.application)
    assert [(h.chain_id, h.event) for h in everything] == [
        (c1.chain_id, "reported"),
        (c2.chain_id, "reported"),
        (c2.chain_id, "attempt"),
        (c1.chain_id, "resumed"),
    ]
    assert [h.event for h in of_two] == ["reported", "attempt"]


# -- DESIGN 4: due chains --------------------------------------------------------------------


@pytest.fixture
def due_setup(store: RetryStore) -> Iterator[dict[str, Chain]]:
    chains = {
        "0840a": record(store, new_subject(), {SAFETY}, cursor=FIRST),
        "0840b": record(store, new_subject(), {SAFETY}, cursor=FIRST),
        "0850": record(store, new_subject(), {SAFETY}, cursor=Cursor(Phase.SAME_DAY, 0, SLOT_0850)),
        "mon": record(store, new_subject(), {SAFETY}, cursor=Cursor(Phase.NEXT_DAY, 0, MON_0830)),
    }
    yield chains


def test_due_chains_oldest_slot_first_then_chain_id(
    store: RetryStore, due_setup: dict[str, Chain]
) -> None:
    c = due_setup
    ties = sorted([c["0840a"].chain_id, c["0840b"].chain_id])
    with store.unit() as u:
        due = u.due_chains(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO))
        limited = u.due_chains(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO), limit=1)
    assert [x.chain_id for x in due] == [*ties, c["0850"].chain_id]
    assert [x.chain_id for x in limited] == ties[:1]


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
def test_due_chains_cut_off_is_inclusive(
    store: RetryStore, due_setup: dict[str, Chain], now: datetime, expected: list[str]
) -> None:
    with store.unit() as u:
        due = {x.chain_id for x in u.due_chains(now)}
    assert due == {due_setup[k].chain_id for k in expected}


# -- Storage: instants are UTC, read back aware ----------------------------------------------


def test_instants_round_trip_as_aware_utc(store: RetryStore) -> None:
    subject = new_subject()
    detected = datetime(2026, 11, 27, 8, 36, 12, 345678, tzinfo=TOKYO)
    with store.unit() as u:
        rec = u.record_report(report_of(subject, {SAFETY}, detected_at=detected), FIRST, detected)
    with store.unit() as u:
        chain = u.get_chain(rec.chain.chain_id)
        row = u.session.get(ChainRow, rec.chain.chain_id)
        (entry,) = u.history(application=subject.application)
    assert chain is not None and row is not None
    for value in (chain.detected_at, row.detected_at, row.created_at, entry.recorded_at):
        assert value == detected
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
    assert row.detected_at.replace(tzinfo=None) == datetime(2026, 11, 26, 23, 36, 12, 345678)
    assert row.next_slot == SLOT_0840
    assert chain.cursor.slot.isoformat() == "2026-11-27T08:40:00+09:00"  # core reads Japan time


def test_stored_instants_are_naive_utc_in_the_database(store: RetryStore) -> None:
    subject = new_subject()
    record(store, subject, {SAFETY})
    with store.engine.connect() as conn:
        stored = conn.execute(
            text("select detected_at, next_slot from retry_chain where application = :a"),
            {"a": subject.application},
        ).one()
    # SQLite hands back text, PostgreSQL a naive timestamp; both say 23:36 UTC the day before.
    assert str(stored[0]).startswith("2026-11-26 23:36:00")
    assert str(stored[1]).startswith("2026-11-26 23:40:00")


def test_naive_instants_are_refused(store: RetryStore) -> None:
    subject = new_subject()
    naive = Report(subject, frozenset({SAFETY}), frozenset(), datetime(2026, 11, 27, 8, 36))
    with pytest.raises(StatementError, match="naive datetime"), store.unit() as u:
        u.record_report(naive, FIRST, NOW)
    with store.unit() as u:
        assert u.find_chain(subject.application) is None


def test_log_immediate_writes_history_without_a_record(store: RetryStore) -> None:
    """R1/R3: a report decided at once leaves history but no live record."""
    subject = new_subject()
    chain_id = uuid.uuid4().hex
    with store.unit() as u:
        u.log_immediate(
            chain_id,
            subject,
            "auto_corrected",
            frozenset({SAFETY}),
            DETECTED,
            "R3: safety found present earlier and missing now",
            NOW,
        )
    with store.unit() as u:
        assert count_live(u.session) == 0
        (entry,) = u.history(application=subject.application)
        rows = u.session.scalars(select(HistoryRow).where(HistoryRow.chain_id == chain_id)).all()
    assert entry.chain_id == chain_id
    assert entry.event == "auto_corrected"
    assert entry.slot == DETECTED
    assert entry.missing == ("safety",)
    assert len(rows) == 1
    assert rows[0].office == subject.office
