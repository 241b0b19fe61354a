"""The use cases without a database: ``Pipeline`` over ``FakeStore`` and ``MemoryRegistry``.

Most tests run twice, over the fakes and over a SQLite file (``h`` / ``store``
parametrized): the same literal expectations on both prove the fakes behave as the
SQL adapters. The full matrix over SQLite and PostgreSQL is
``tests/integration/test_service.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pendulum
import pytest
from sqlalchemy import text

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.config import Settings
from retry_pipeline.errors import DuplicateRecord, InvalidReport
from retry_pipeline.intake import Action
from retry_pipeline.model import (
    Chain,
    Cursor,
    Dispatch,
    Ending,
    HistoryEntry,
    Outcome,
    Phase,
)
from retry_pipeline.ports import Store
from retry_pipeline.service.intake import Accepted
from tests.conftest import create_registry_standin_at
from tests.fakes import (
    COMPLETION,
    INSURANCE,
    NEW_FROM,
    SAFETY,
    TOKYO,
    FakeStore,
    FakeTables,
    Harness,
    chain_of,
    completion_for,
    continuous,
    insurance,
    new_inspection,
    one_outcome,
    over_fakes,
    over_sql,
    report,
    safety_for,
    uid,
)

NOW = datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO)


def jst(day: int, hour: int, minute: int, second: int = 0, month: int = 11) -> pendulum.DateTime:
    """A literal Japan-time instant of 2026 (as ``Cursor.slot`` holds it)."""
    return pendulum.datetime(2026, month, day, hour, minute, second, tz="Asia/Tokyo")


SLOT_0840 = Cursor(Phase.SAME_DAY, 0, jst(27, 8, 40))
SLOT_0850 = Cursor(Phase.SAME_DAY, 1, jst(27, 8, 50))
HarnessFactory = Callable[..., Harness]


@pytest.fixture(params=["fake", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HarnessFactory]:
    """Harnesses over the fakes, or over a migrated SQLite file."""
    disposers: list[Callable[[], None]] = []

    def _make(settings: Settings | None = None) -> Harness:
        if request.param == "fake":
            return over_fakes(settings)
        url = f"sqlite:///{tmp_path / f'retry-{len(disposers)}.sqlite3'}"
        upgrade(url)
        create_registry_standin_at(url)
        store = RetryStore.from_url(url)
        registry_engine = make_engine(url, write_lock=False)
        disposers.extend([store.engine.dispose, registry_engine.dispose])
        return over_sql(store, store.engine, registry_engine, settings)

    yield _make
    for dispose in disposers:
        dispose()


@pytest.fixture
def h(make: HarnessFactory) -> Harness:
    return make()


@pytest.fixture(params=["fake", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store: ``FakeStore``, or ``RetryStore`` over a migrated SQLite file."""
    if request.param == "fake":
        yield FakeStore()
        return
    url = f"sqlite:///{tmp_path / 'parts.sqlite3'}"
    upgrade(url)
    create_registry_standin_at(url)
    sql = RetryStore.from_url(url)
    yield sql
    sql.engine.dispose()


def ending(chain: Chain, outcome: Outcome, decided_at: datetime) -> Ending:
    return Ending(chain.chain_id, chain.subject, outcome, chain.missing, decided_at, "why")


def started(detected_at: datetime | None = None, office: str = "OFFICE-A") -> Chain:
    r = report(continuous(office), {SAFETY}, detected_at or jst(27, 8, 36))
    return chain_of(r, SLOT_0840)


def line(chain: Chain, event: str, slot: datetime | None, n: int | None = None) -> HistoryEntry:
    return HistoryEntry(
        chain.chain_id, chain.subject.application, event, n, slot, ("safety",), "d", NOW,
        chain.subject.office,
    )  # fmt: skip


# == the parts behave as the SQL adapters =====================================================


def test_unit_commits_and_a_later_unit_reads_back_what_was_written(store: Store) -> None:
    chain = started()
    with store.unit() as u:
        u.chains.insert([chain], NOW)
        u.history.append([line(chain, "reported", SLOT_0840.slot)])
        u.signals.add(jst(27, 10, 45), NOW)
        letter = u.dead_letters.add("retry_pipeline.report_missing", "bad", "{}", NOW)
    with store.unit() as u:
        assert u.chains.get(chain.chain_id) == chain
        assert u.chains.of_applications([chain.subject.application], lock=True) == {
            chain.subject.application: chain
        }
        assert u.history.lines() == [line(chain, "reported", SLOT_0840.slot)]
        assert u.signals.between(date(2026, 11, 27), date(2026, 11, 27)) == [jst(27, 10, 45)]
        [kept] = u.dead_letters.newest(5)
        assert (kept.id, kept.task, kept.payload) == (letter, "retry_pipeline.report_missing", "{}")


def test_unit_that_raises_rolls_back_every_part_and_runs_no_after_commit(store: Store) -> None:
    kept, dropped = started(), started()
    with store.unit() as u:
        u.chains.insert([kept], NOW)
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), store.unit() as u:
        u.chains.insert([dropped], NOW)
        u.chains.save([replace(kept, attempts_made=3, version=2)], NOW)
        u.chains.mark_dispatched([kept.chain_id], SLOT_0840.slot)
        u.history.append([line(dropped, "reported", SLOT_0840.slot)])
        u.outbox.add([ending(kept, Outcome.RESUMED, jst(27, 8, 40))], NOW)
        u.signals.add(jst(27, 10, 45), NOW)
        u.dead_letters.add("t", "r", "p", NOW)
        u.after_commit(lambda: ran.append("after"))
        raise RuntimeError("boom")
    assert ran == []
    with store.unit() as u:
        assert u.chains.of_office(None) == [kept]
        assert u.history.lines() == []
        assert u.outbox.existing([kept.chain_id]) == set()
        assert u.signals.between(date(2026, 11, 1), date(2026, 12, 31)) == []
        assert u.dead_letters.newest(5) == []


def test_after_commit_runs_once_committed_in_order_and_may_open_a_unit(store: Store) -> None:
    chain = started()
    seen: list[object] = []
    with store.unit() as u:
        u.chains.insert([chain], NOW)
        u.after_commit(lambda: seen.append("first"))

        def read_back() -> None:
            with store.unit() as again:
                seen.append(again.chains.get(chain.chain_id))

        u.after_commit(read_back)
        assert seen == []
    assert seen == ["first", chain]


def test_second_record_of_an_application_is_a_duplicate_and_writes_nothing(store: Store) -> None:
    first = started()
    twin = replace(started(), subject=first.subject)  # same application, another chain
    other = started()
    with store.unit() as u:
        u.chains.insert([first], NOW)
    with pytest.raises(DuplicateRecord), store.unit() as u:
        u.chains.insert([other, twin], NOW)
    with store.unit() as u:
        assert u.chains.of_office(None) == [first]
    with pytest.raises(DuplicateRecord), store.unit() as u:  # twins within one batch
        u.chains.insert([other, replace(started(), subject=other.subject)], NOW)
    with store.unit() as u:
        assert u.chains.of_office(None) == [first]


def test_second_outcome_of_a_chain_is_a_duplicate(store: Store) -> None:
    chain = started()
    with store.unit() as u:
        [added] = u.outbox.add([ending(chain, Outcome.AUTO_CORRECTED, jst(27, 9, 30))], NOW)
    assert (added.chain_id, added.idempotency_key, added.send_count) == (
        chain.chain_id,
        f"{chain.chain_id}:auto_corrected",
        0,
    )
    assert (added.outcome, added.missing, added.decided_at) == (
        Outcome.AUTO_CORRECTED,
        ("safety",),
        jst(27, 9, 30),
    )
    for outcome in (Outcome.AUTO_CORRECTED, Outcome.RESUMED):
        with pytest.raises(DuplicateRecord), store.unit() as u:
            u.outbox.add([ending(chain, outcome, jst(27, 9, 40))], NOW)
    with store.unit() as u:
        assert u.outbox.existing([chain.chain_id, "nope"]) == {chain.chain_id}
        assert u.outbox.count_unconfirmed() == 1


def test_save_writes_progress_only_and_mark_dispatched_only_at_its_slot(store: Store) -> None:
    a, b = started(), started()
    with store.unit() as u:
        u.chains.insert([a, b], NOW)
    moved = replace(
        a,
        subject=replace(a.subject, office="OTHER"),  # not a progress column: not written
        detected_at=jst(27, 7, 0),
        missing=frozenset({INSURANCE}),
        found=frozenset({SAFETY}),
        attempts_made=1,
        cursor=SLOT_0850,
        version=2,
    )
    with store.unit() as u:
        u.chains.save([moved], NOW)
        u.chains.mark_dispatched([a.chain_id, b.chain_id], SLOT_0840.slot)
    with store.unit() as u:
        assert u.chains.get(a.chain_id) == replace(
            moved, subject=a.subject, detected_at=a.detected_at
        )
        assert u.chains.get(b.chain_id) == replace(b, dispatched_for=SLOT_0840.slot)


def test_chain_queries_and_their_orders(store: Store) -> None:
    late = replace(started(jst(27, 8, 37)), chain_id="c" * 32)
    early = replace(started(jst(27, 8, 35)), chain_id="a" * 32)
    b_office = replace(started(jst(27, 8, 30), office="OFFICE-B"), chain_id="b" * 32)
    next_slot = replace(started(), cursor=SLOT_0850, chain_id="0" * 32)
    with store.unit() as u:
        u.chains.insert([late, early, b_office, next_slot], NOW)
    with store.unit() as u:
        assert u.chains.of_office("OFFICE-A") == [early, next_slot, late]  # oldest detection
        assert u.chains.of_office(None, late.subject.application) == [late]
        assert u.chains.due(jst(27, 8, 39, 59), 10) == []
        assert u.chains.due(jst(27, 8, 40), 10) == [early, b_office, late]  # slot, then id
        assert u.chains.due(jst(27, 9, 0), 2) == [early, b_office]
        assert u.chains.slotted_between(jst(27, 8, 40), jst(27, 8, 50)) == [early, b_office, late]
        assert u.chains.slotted_between(jst(27, 8, 40, 1), jst(27, 8, 50, 1)) == [next_slot]
        assert sorted(c.chain_id for c in u.chains.claim(jst(27, 8, 40), 10)) == [
            early.chain_id,
            b_office.chain_id,
            late.chain_id,
        ]
        assert len(u.chains.claim(jst(27, 8, 40), 2)) == 2
        u.chains.delete([early.chain_id, "missing"])
        assert u.chains.get(early.chain_id) is None


def test_history_lines_filters_and_last_decisions(store: Store) -> None:
    one, two = started(), started(office="OFFICE-B")
    with store.unit() as u:
        u.history.append(
            [
                line(one, "reported", SLOT_0840.slot),
                line(one, "auto_corrected", jst(27, 9, 30), 6),
                line(two, "resumed", jst(27, 8, 50), 2),
                line(one, "duplicate", jst(27, 8, 36)),
                line(one, "resumed", None),  # no slot: not a decision it can be compared with
            ]
        )
    with store.unit() as u:
        assert [h.event for h in u.history.lines(application=one.subject.application)] == [
            "reported",
            "auto_corrected",
            "duplicate",
            "resumed",
        ]
        assert [h.event for h in u.history.lines(office="OFFICE-B")] == ["resumed"]
        assert u.history.last_decisions(
            [one.subject.application, two.subject.application, "x"]
        ) == {
            one.subject.application: (one.chain_id, jst(27, 9, 30)),
            two.subject.application: (two.chain_id, jst(27, 8, 50)),
        }


def test_outbox_pending_mark_sent_resend_and_confirm(store: Store) -> None:
    a, b = started(), started()
    with store.unit() as u:
        first, second = u.outbox.add(
            [
                ending(a, Outcome.RESUMED, jst(27, 8, 40)),
                ending(b, Outcome.RESUMED, jst(27, 8, 40)),
            ],
            NOW,
        )
    with store.unit() as u:
        assert [p.id for p in u.outbox.pending(10, resend_before=None)] == [first.id, second.id]
        assert [p.id for p in u.outbox.pending(1, resend_before=None)] == [first.id]
        u.outbox.mark_sent([first.id], jst(27, 8, 41))
    with store.unit() as u:
        assert [p.id for p in u.outbox.pending(10, resend_before=None)] == [second.id]
        assert [p.id for p in u.outbox.pending(10, resend_before=jst(27, 8, 40))] == [second.id]
        resend = u.outbox.pending(10, resend_before=jst(27, 8, 41))
        # The fair relay: never-sent first, then re-sends due by then (inclusive).
        assert [(p.id, p.send_count) for p in resend] == [(second.id, 0), (first.id, 1)]
        # Plain datetimes: SqlOutbox.confirm cannot bind a pendulum instant on SQLite (below).
        assert u.outbox.confirm(first.idempotency_key, datetime(2026, 11, 27, 8, 42, tzinfo=UTC))
        assert u.outbox.confirm(first.idempotency_key, NOW)  # again: still known
        assert not u.outbox.confirm("unknown:resumed", NOW)
    with store.unit() as u:
        assert [p.id for p in u.outbox.pending(10, resend_before=jst(28, 0, 0))] == [second.id]
        assert u.outbox.count_unconfirmed() == 1


def test_confirm_stores_utc_like_every_other_instant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'confirm.sqlite3'}"
    upgrade(url)
    create_registry_standin_at(url)
    sql = RetryStore.from_url(url)
    try:
        with sql.unit() as u:
            [added] = u.outbox.add([ending(started(), Outcome.RESUMED, NOW)], NOW)
        with sql.unit() as u:
            assert u.outbox.confirm(added.idempotency_key, NOW)
        with sql.unit() as u:
            stored = u.session.execute(
                text("SELECT created_at, confirmed_at FROM outbox WHERE id = :id"),
                {"id": added.id},
            ).one()
        assert tuple(stored) == ("2026-11-26 23:36:05.000000", "2026-11-26 23:36:05.000000")
        with sql.unit() as u:  # and a pendulum instant, as FixedClock(jst(...)) gives
            u.outbox.confirm(added.idempotency_key, jst(27, 8, 42))
    finally:
        sql.engine.dispose()


def test_close_signals_by_japan_day_inclusive_earliest_first(store: Store) -> None:
    with store.unit() as u:
        u.signals.add(jst(30, 10, 45), NOW)
        u.signals.add(jst(30, 9, 0), NOW)
        u.signals.add(datetime(2026, 11, 26, 15, 30, tzinfo=UTC), NOW)  # 11-27 00:30 in Japan
        u.signals.add(jst(1, 12, 0, month=12), NOW)
    with store.unit() as u:
        assert u.signals.between(date(2026, 11, 27), date(2026, 11, 27)) == [jst(27, 0, 30)]
        assert u.signals.between(date(2026, 11, 28), date(2026, 11, 30)) == [
            jst(30, 9, 0),
            jst(30, 10, 45),
        ]
        assert len(u.signals.between(date(2026, 11, 26), date(2026, 12, 1))) == 4


def test_dead_letters_newest_first_reason_capped(store: Store) -> None:
    with store.unit() as u:
        ids = [u.dead_letters.add(f"t{i}", "r" * 2500, f"p{i}", NOW) for i in range(3)]
    with store.unit() as u:
        newest = u.dead_letters.newest(2)
    assert [d.id for d in newest] == [ids[2], ids[1]]
    assert [d.task for d in newest] == ["t2", "t1"]
    assert len(newest[0].reason) == 2000
    assert newest[0].received_at == NOW


def test_fake_refuses_a_nested_unit() -> None:
    store = FakeStore()
    with pytest.raises(RuntimeError, match="already open"), store.unit(), store.unit():
        pass
    with store.unit() as u:  # the outer one rolled back and closed
        assert u.chains.of_office(None) == []


# == intake (R1, R3, R4) =======================================================================


def test_start_records_the_chain_and_sends_its_slot(h: Harness) -> None:
    subject = continuous()
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    assert accepted == Accepted(accepted.chain_id, True, True, "R1: retry target", jst(27, 8, 40))
    assert h.dispatcher.sent == [jst(27, 8, 40)]
    chain = h.live(subject.application)
    assert (chain.missing, chain.attempts_made, chain.cursor.phase) == (
        frozenset({SAFETY}),
        0,
        Phase.SAME_DAY,
    )
    assert chain.dispatched_for == jst(27, 8, 40)
    [reported] = h.lines(subject.application)
    assert (reported.event, reported.slot, reported.detail) == (
        "reported",
        jst(27, 8, 40),
        "phase same_day",
    )
    assert h.pipeline.portal_status(subject.application) == "検査申請審査中"


def test_merge_adds_the_certificates_without_restarting(h: Harness) -> None:
    subject = continuous()
    h.at(jst(27, 8, 36, 5))
    first = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    h.at(jst(27, 8, 38, 5))
    second = h.pipeline.accept_report(report(subject, {INSURANCE}, jst(27, 8, 38)))
    assert second == Accepted(
        first.chain_id, True, False, "R4: merged", jst(27, 8, 40), Action.MERGE
    )
    chain = h.live(subject.application)
    assert chain.missing == {SAFETY, INSURANCE}
    assert chain.version == 2
    assert [(x.event, x.detail) for x in h.lines(subject.application)] == [
        ("reported", "phase same_day"),
        ("merged", "added insurance"),
    ]
    assert h.dispatcher.sent == [jst(27, 8, 40)]  # the merge sent nothing more


def test_r3_report_missing_what_was_confirmed_ends_the_live_chain(h: Harness) -> None:
    subject = continuous()
    h.at(jst(27, 8, 36, 5))
    first = h.pipeline.accept_report(report(subject, {INSURANCE}, jst(27, 8, 36), {SAFETY}))
    h.at(jst(27, 8, 38, 5))
    second = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 38)))
    assert (second.chain_id, second.retry, second.created) == (first.chain_id, False, False)
    assert second.reason == "R3: safety found present earlier, missing now"
    assert h.chain(subject.application) is None
    outcome = one_outcome(h)
    assert (outcome.outcome, outcome.decided_at, outcome.missing) == (
        Outcome.AUTO_CORRECTED,
        jst(27, 8, 38),
        ("safety",),
    )
    assert h.events(subject.application) == ["reported", "auto_corrected"]
    h.at(jst(27, 8, 40, 1))
    assert sum(h.pipeline.run_slot(jst(27, 8, 40)).values()) == 0  # the sent slot finds nothing
    assert h.outbox_rows(subject.application) == 1


def test_immediate_auto_correct_and_its_redelivery_give_one_outcome(h: Harness) -> None:
    subject = continuous()
    same = report(subject, {SAFETY}, jst(27, 8, 36), confirmed={SAFETY})
    h.at(jst(27, 8, 36, 5))
    first = h.pipeline.accept_report(same)
    assert (first.retry, first.created, first.next_slot) == (False, True, None)
    assert first.reason == "R3: safety found present earlier and missing now"
    h.at(jst(27, 8, 36, 9))
    second = h.pipeline.accept_report(same)
    assert (second.chain_id, second.retry, second.created) == (first.chain_id, False, False)
    assert second.reason == "duplicate report: already decided at 2026-11-27T08:36:00+09:00"
    assert h.events(subject.application) == ["auto_corrected", "duplicate"]
    assert one_outcome(h).idempotency_key == f"{first.chain_id}:auto_corrected"
    assert h.outbox_rows(subject.application) == 1
    assert h.dispatcher.sent == []


def test_new_inspection_before_its_start_date_is_auto_corrected_at_once(
    make: HarnessFactory,
) -> None:
    h = make(Settings(new_inspection_retry_from=NEW_FROM))
    subject = new_inspection()
    h.at(jst(30, 10, 5, 5))
    accepted = h.pipeline.accept_report(report(subject, {INSURANCE}, jst(30, 10, 5)))
    assert not accepted.retry
    assert one_outcome(h).decided_at == jst(30, 10, 5)
    assert h.chain(subject.application) is None


def test_batch_with_two_reports_of_one_application_merges_in_one_record(h: Harness) -> None:
    one, two = continuous(), continuous()
    h.at(jst(27, 8, 37))
    first, refused, merged = h.pipeline.accept_reports(
        [
            report(one, {SAFETY}, jst(27, 8, 36)),
            report(two, {SAFETY}, jst(27, 9, 36)),  # an hour ahead: refused alone
            report(one, {INSURANCE}, jst(27, 8, 36, 30)),
        ]
    )
    assert isinstance(first, Accepted) and first.created
    assert isinstance(refused, InvalidReport) and "future" in str(refused)
    assert isinstance(merged, Accepted) and merged.chain_id == first.chain_id
    assert not merged.created
    chain = h.live(one.application)
    assert chain.missing == {SAFETY, INSURANCE}
    assert chain.version == 2
    assert h.chain(two.application) is None
    assert h.events(one.application) == ["reported", "merged"]
    assert h.dispatcher.sent == [jst(27, 8, 40)]


def test_batch_that_starts_and_ends_a_chain_leaves_no_record_and_one_outcome(
    h: Harness,
) -> None:
    subject = continuous()
    h.at(jst(27, 8, 38, 5))
    started_, ended = h.pipeline.accept_reports(
        [
            report(subject, {INSURANCE}, jst(27, 8, 36), {SAFETY}),
            report(subject, {SAFETY}, jst(27, 8, 38)),  # R3 within the batch
        ]
    )
    assert isinstance(started_, Accepted) and isinstance(ended, Accepted)
    assert ended.chain_id == started_.chain_id and not ended.retry
    assert h.chain(subject.application) is None
    assert h.events(subject.application) == ["reported", "auto_corrected"]
    assert one_outcome(h).decided_at == jst(27, 8, 38)
    assert h.outbox_rows(subject.application) == 1


def test_batch_with_a_report_twice_records_the_second_as_duplicate(h: Harness) -> None:
    subject = continuous()
    same = report(subject, {SAFETY}, jst(27, 8, 36), {SAFETY})
    h.at(jst(27, 8, 36, 5))
    first, again = h.pipeline.accept_reports([same, same])
    assert isinstance(first, Accepted) and isinstance(again, Accepted)
    assert again.chain_id == first.chain_id
    assert h.events(subject.application) == ["auto_corrected", "duplicate"]
    assert h.outbox_rows(subject.application) == 1


def test_a_concurrent_report_that_wins_the_insert_is_merged_into() -> None:
    """intake reads again after DuplicateRecord (RACE_TRIES): the rival record is merged."""
    h = over_fakes()
    assert isinstance(h.store, FakeStore)
    subject = continuous()
    rival = chain_of(report(subject, {INSURANCE}, jst(27, 8, 35)), SLOT_0840)

    def commit_rival(tables: FakeTables) -> None:
        tables.chains[rival.chain_id] = rival

    h.store.concurrent.append(commit_rival)
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    assert accepted == Accepted(
        rival.chain_id, True, False, "R4: merged", jst(27, 8, 40), Action.MERGE
    )
    assert h.live(subject.application).missing == {SAFETY, INSURANCE}
    assert h.events(subject.application) == ["merged"]  # the lost attempt left nothing
    assert h.store.rollbacks == 1


def test_future_report_beyond_the_clock_skew_is_refused(h: Harness) -> None:
    subject = continuous()
    h.at(jst(27, 8, 30))
    with pytest.raises(InvalidReport, match="in the future"):
        h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 35, 1)))
    assert h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 35))).retry


# == whole chains over the grid ==================================================================


def test_r9_worked_example_friday_0836_auto_corrects_at_0930(h: Harness) -> None:
    subject = continuous()
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    slots = [jst(27, 8, 40), jst(27, 8, 50), jst(27, 9, 0), jst(27, 9, 10), jst(27, 9, 20)]
    slots.append(jst(27, 9, 30))
    assert h.walk(accepted.chain_id, subject.application, slots) == ["next"] * 5 + [
        "auto_corrected"
    ]
    outcome = one_outcome(h)
    assert (outcome.chain_id, outcome.outcome, outcome.decided_at, outcome.missing) == (
        accepted.chain_id,
        Outcome.AUTO_CORRECTED,
        jst(27, 9, 30),
        ("safety",),
    )
    assert h.attempt_slots(subject.application) == slots
    assert [x.detail for x in h.lines(subject.application)][-1] == "R8: last attempt"
    assert h.dispatcher.sent == slots
    h.at(jst(27, 9, 40))
    assert h.pipeline.tick().dispatched == []
    assert h.pipeline.portal_status(subject.application) is None


def test_r11_worked_example_friday_1525_parks_to_monday_0830(h: Harness) -> None:
    subject = continuous()
    h.at(jst(27, 15, 25, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 15, 25)))
    friday = [jst(27, 15, 30), jst(27, 15, 40), jst(27, 15, 50)]
    assert h.walk(accepted.chain_id, subject.application, friday) == [
        "next",
        "next",
        "parked-after",
    ]
    chain = h.live(subject.application)
    assert chain.cursor == Cursor(Phase.NEXT_DAY, 0, jst(30, 8, 30))
    assert h.lines(subject.application)[-1].detail == (
        "still missing; next 2026-11-30T08:30:00+09:00 (parked, R10)"
    )
    h.at(jst(27, 16, 0))
    assert h.pipeline.tick().dispatched == []
    assert h.dispatcher.sent == [*friday[:3]]  # nothing sent across the weekend
    monday = [jst(30, 8, 30)]
    assert h.walk(accepted.chain_id, subject.application, monday) == ["auto_corrected"]
    assert one_outcome(h).decided_at == jst(30, 8, 30)
    assert h.attempt_slots(subject.application) == friday + monday


def test_r8_found_at_attempt_3_resumes(h: Harness) -> None:
    subject = continuous()
    number = uid("NO")
    h.insert(
        safety_for(subject, jst(27, 8, 55), insurance_no=number),
        insurance("INS-1", number, jst(27, 8, 0)),
    )
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    slots = [jst(27, 8, 40), jst(27, 8, 50), jst(27, 9, 0)]
    assert h.walk(accepted.chain_id, subject.application, slots) == ["next", "next", "resumed"]
    outcome = one_outcome(h)
    assert (outcome.outcome, outcome.decided_at, outcome.missing) == (
        Outcome.RESUMED,
        jst(27, 9, 0),
        (),
    )
    assert outcome.idempotency_key == f"{accepted.chain_id}:resumed"


def test_r3_found_then_deleted_auto_corrects_at_the_next_attempt(h: Harness) -> None:
    subject = continuous()
    h.insert(safety_for(subject, jst(27, 8, 45), insurance_no=uid("NO"), deleted_at=jst(27, 8, 55)))
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    slots = [jst(27, 8, 40), jst(27, 8, 50), jst(27, 9, 0)]
    assert h.walk(accepted.chain_id, subject.application, slots) == [
        "next",
        "next",
        "auto_corrected",
    ]
    assert one_outcome(h).missing == ("safety",)


def test_new_inspection_completion_and_insurance_present_resume(make: HarnessFactory) -> None:
    h = make(Settings(new_inspection_retry_from=NEW_FROM))
    subject = new_inspection()
    h.at(jst(1, 10, 5, 5, month=12))
    accepted = h.pipeline.accept_report(report(subject, {COMPLETION}, jst(1, 10, 5, month=12)))
    assert accepted.retry
    h.insert(
        completion_for(subject, jst(1, 10, 8, month=12)),
        insurance("INS-9", subject.insurance_no or "", jst(1, 10, 9, month=12)),
    )
    slots = [jst(1, 10, 10, month=12)]
    assert h.walk(accepted.chain_id, subject.application, slots) == ["resumed"]


def test_run_slot_decides_a_whole_slot_in_batches(h: Harness) -> None:
    subjects = [continuous() for _ in range(5)]
    number = uid("NO")
    h.insert(
        safety_for(subjects[0], jst(27, 8, 38), insurance_no=number),
        insurance("INS-1", number, jst(27, 8, 0)),
    )
    h.at(jst(27, 8, 36, 5))
    h.pipeline.accept_reports([report(s, {SAFETY}, jst(27, 8, 36)) for s in subjects])
    assert h.dispatcher.sent == [jst(27, 8, 40)]  # one message for the whole slot
    h.at(jst(27, 8, 40, 1))
    counts = h.pipeline.run_slot(jst(27, 8, 40), batch=2)
    assert counts == {"next": 4, "parked": 0, "resumed": 1, "auto_corrected": 0}
    assert h.chain(subjects[0].application) is None
    for s in subjects[1:]:
        chain = h.live(s.application)
        assert (chain.attempts_made, chain.cursor.slot) == (1, jst(27, 8, 50))
        assert chain.dispatched_for == jst(27, 8, 50)
    assert h.dispatcher.sent == [jst(27, 8, 40), jst(27, 8, 50)]  # 08:50 sent once
    assert one_outcome(h).application == subjects[0].application


# == the close (R10) ==============================================================================


def test_r10_close_signal_parks_the_chain_and_the_sent_slot_decides_nothing(h: Harness) -> None:
    subject = continuous()
    h.at(jst(30, 10, 5, 5))  # Mon
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(30, 10, 5)))
    assert h.walk(accepted.chain_id, subject.application, [jst(30, 10, 10)]) == ["next"]
    h.at(jst(30, 10, 12))
    assert h.pipeline.record_close() == 1
    chain = h.live(subject.application)
    assert chain.cursor == Cursor(Phase.NEXT_DAY, 0, jst(1, 8, 30, month=12))
    assert chain.attempts_made == 1
    parked = h.lines(subject.application)[-1]
    assert (parked.event, parked.slot, parked.detail) == (
        "parked",
        jst(1, 8, 30, month=12),
        "R10: OSS close",
    )
    h.at(jst(30, 10, 20, 1))
    assert sum(h.pipeline.run_slot(jst(30, 10, 20)).values()) == 0  # the countdown sent before
    assert h.live(subject.application) == chain
    assert h.pipeline.record_close() == 0  # a second signal: nothing left to park
    h.at(jst(1, 8, 30, month=12))
    assert h.pipeline.tick().dispatched == [Dispatch(accepted.chain_id, 2, jst(1, 8, 30, month=12))]


def test_r10_close_signal_recorded_ahead_parks_at_its_time(h: Harness) -> None:
    subject = continuous()
    h.at(jst(30, 9, 0))
    assert h.pipeline.record_close(jst(30, 10, 45)) == 0
    h.at(jst(30, 10, 35, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(30, 10, 35)))
    assert accepted.next_slot == jst(30, 10, 40)
    assert h.walk(accepted.chain_id, subject.application, [jst(30, 10, 40)]) == ["parked-after"]
    assert h.live(subject.application).cursor.slot == jst(1, 8, 30, month=12)


def test_r13_report_after_the_close_signal_waits_fresh_for_the_next_opening(h: Harness) -> None:
    subject = continuous()
    h.at(jst(30, 10, 0))
    h.pipeline.record_close()
    h.at(jst(30, 10, 5, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(30, 10, 5)))
    assert accepted.next_slot == jst(1, 8, 30, month=12)
    # Closed: off-hours, so the full budget from the next opening (R13).
    assert h.live(subject.application).cursor == Cursor(Phase.FRESH, 0, jst(1, 8, 30, month=12))
    assert h.dispatcher.sent == []


# == the tick, the relay, confirmations, dead letters ==============================================


def test_a_failed_send_is_logged_and_the_tick_sends_it_once_a_slot_overdue(h: Harness) -> None:
    subject = continuous()
    h.dispatcher.failures = 1  # the broker is down when the report comes
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36)))
    assert accepted.retry and h.dispatcher.sent == []
    h.at(jst(27, 8, 49, 59))
    assert h.pipeline.tick().dispatched == []
    h.at(jst(27, 8, 50))
    assert h.pipeline.tick().dispatched == [Dispatch(accepted.chain_id, 1, jst(27, 8, 40))]
    assert h.dispatcher.sent == [jst(27, 8, 40)]
    h.at(jst(27, 8, 50, 1))
    assert h.pipeline.run_slot(jst(27, 8, 40))["next"] == 1  # judged as of 08:40
    assert h.attempt_slots(subject.application) == [jst(27, 8, 40)]
    assert h.live(subject.application).cursor.slot == jst(27, 8, 50)


def test_relay_redelivers_until_confirmed(h: Harness) -> None:
    subject = continuous()
    h.gateway.failures = 1
    h.at(jst(27, 8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(27, 8, 36), {SAFETY}))
    assert h.gateway.delivered == []
    h.at(jst(27, 8, 40))
    assert h.pipeline.relay() == 1  # never sent: at once
    assert [o.send_count for o in h.gateway.delivered] == [0]
    h.at(jst(27, 8, 59, 59))
    assert h.pipeline.relay() == 0  # sent, not yet two slots ago
    h.at(jst(27, 9, 0, 1))
    assert h.pipeline.relay() == 1  # unconfirmed two slots on: again, same key
    assert [o.send_count for o in h.gateway.delivered] == [0, 1]
    key = f"{accepted.chain_id}:auto_corrected"
    assert {o.idempotency_key for o in h.gateway.delivered} == {key}
    h.at(datetime(2026, 11, 27, 9, 0, 2, tzinfo=TOKYO))  # plain: see test_confirm_stores_utc
    assert h.pipeline.confirm_outcome(key)
    assert not h.pipeline.confirm_outcome("nope:resumed")
    h.at(jst(27, 10, 0))
    assert h.pipeline.relay() == 0
    assert len(h.gateway.delivered) == 2


def test_a_delivery_that_stops_midway_marks_only_what_went(h: Harness) -> None:
    """DeliveryFailed(2) of 3: the two that went stay booked as sent with the decision
    (their back-off runs), the third's booking is taken back, so it is never-sent and
    goes first at the next relay; nothing is sent twice."""
    subjects = [continuous() for _ in range(3)]
    h.gateway.stop_after = 2
    h.at(jst(27, 8, 36, 5))
    reports = [report(s, {SAFETY}, jst(27, 8, 36), {SAFETY}) for s in subjects]
    h.pipeline.accept_reports(reports)  # R3: each auto-corrected at once, one delivery
    first = [o.application for o in h.gateway.delivered]
    assert len(first) == 2
    h.at(jst(27, 8, 40))
    assert h.pipeline.relay() == 1  # only the one that did not go
    assert sorted(o.application for o in h.gateway.delivered) == sorted(
        s.application for s in subjects
    )
    assert [o.send_count for o in h.gateway.delivered] == [0, 0, 0]
    assert h.pipeline.relay() == 0


def test_keep_dead_letter(h: Harness) -> None:
    h.at(jst(27, 8, 36))
    letter = h.pipeline.keep_dead_letter("retry_pipeline.report_missing", "bad json", "{x")
    with h.store.unit() as u:
        [kept] = u.dead_letters.newest(1)
    assert (kept.id, kept.task, kept.reason, kept.payload, kept.received_at) == (
        letter,
        "retry_pipeline.report_missing",
        "bad json",
        "{x",
        jst(27, 8, 36),
    )


# == the fake and SQLite give the same history ================================================


def _script(h: Harness) -> list[tuple[object, ...]]:
    """A day of reports, attempts, a close and endings; the history without ids or times."""
    apps = [continuous() for _ in range(4)]
    number = uid("NO")
    h.insert(
        safety_for(apps[1], jst(27, 8, 45), insurance_no=number),
        insurance("INS-1", number, jst(27, 8, 0)),
    )
    h.at(jst(27, 8, 36, 5))
    h.pipeline.accept_reports(
        [
            report(apps[0], {SAFETY}, jst(27, 8, 36)),
            report(apps[1], {SAFETY}, jst(27, 8, 36)),
            report(apps[2], {SAFETY}, jst(27, 8, 35), {SAFETY}),
            report(apps[3], {SAFETY}, jst(27, 8, 30)),
            report(apps[3], {INSURANCE}, jst(27, 8, 31)),
        ]
    )
    for minute in (40, 50):
        h.at(jst(27, 8, minute))
        h.pipeline.tick()
        h.at(jst(27, 8, minute, 2))
        h.deliver(jst(27, 8, minute))
    h.at(jst(27, 8, 55))
    h.pipeline.record_close()
    h.at(jst(30, 8, 30))
    h.pipeline.tick()
    h.at(jst(30, 8, 30, 2))
    h.deliver(jst(30, 8, 30))
    names = {a.application: i for i, a in enumerate(apps)}
    with h.store.unit() as u:
        lines = u.history.lines()
    # By application (stable: each one's lines in history order); across applications
    # the order follows the random chain ids (slotted_between, due: by slot, then id).
    by_app = sorted(
        (
            (names[x.application], x.event, x.attempt_no, x.slot, x.missing, x.detail)
            for x in lines
            if x.application in names
        ),
        key=lambda row: row[0],
    )
    delivered = sorted((names[o.application], o.outcome.value) for o in h.gateway.delivered)
    return [*by_app, ("delivered", delivered)]


def test_the_fake_and_sqlite_record_the_same_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'same.sqlite3'}"
    upgrade(url)
    create_registry_standin_at(url)
    sql = RetryStore.from_url(url)
    registry_engine = make_engine(url, write_lock=False)
    try:
        over_sqlite = _script(over_sql(sql, sql.engine, registry_engine))
    finally:
        sql.engine.dispose()
        registry_engine.dispose()
    over_fake = _script(over_fakes())
    assert over_fake == over_sqlite
    assert [e[1] for e in over_fake if e[0] == 3] == [
        "reported",
        "merged",
        "attempt",
        "attempt",
        "parked",
        "auto_corrected",
    ]


def test_batch_that_ends_a_live_chain_then_starts_a_new_one_of_the_same_application(
    h: Harness,
) -> None:
    """R3 ends the live record; a later detection in the same batch starts a new one (R4)."""
    subject = continuous()
    h.at(jst(27, 8, 36, 5))
    first = h.pipeline.accept_report(report(subject, {INSURANCE}, jst(27, 8, 36), {SAFETY}))
    h.at(jst(27, 8, 39, 5))
    ended, again = h.pipeline.accept_reports(
        [
            report(subject, {SAFETY}, jst(27, 8, 38)),  # R3: the live chain ends at 08:38
            # A new detection after that decision, of a certificate never found present
            # (safety was: naming it again would auto-correct at once, R3 across reports).
            report(subject, {INSURANCE}, jst(27, 8, 39)),
        ]
    )
    assert isinstance(ended, Accepted) and isinstance(again, Accepted)
    assert (ended.chain_id, ended.retry) == (first.chain_id, False)
    assert again.created and again.chain_id != first.chain_id
    assert h.live(subject.application).chain_id == again.chain_id
    assert h.events(subject.application) == ["reported", "auto_corrected", "reported"]


def test_a_duplicate_reads_the_same_whether_in_its_batch_or_redelivered(h: Harness) -> None:
    subject = continuous()
    same = report(subject, {SAFETY}, jst(27, 8, 36), {SAFETY})
    h.at(jst(27, 8, 36, 5))
    _first, in_batch = h.pipeline.accept_reports([same, same])
    redelivered = h.pipeline.accept_report(same)
    assert isinstance(in_batch, Accepted)
    assert in_batch.reason == redelivered.reason
