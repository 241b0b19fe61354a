"""The use cases (``Pipeline``) over the real store on SQLite and PostgreSQL.

The registry reads the same database; the clock is a FixedClock moved by hand; the
Dispatcher and the ExaminationGateway are the recording fakes of ``tests/fakes.py``.
Every expected time is a literal Japan-time datetime. The same scenarios run without
a database in ``tests/unit/test_service_fakes.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidReport, NotARetryTarget
from retry_pipeline.model import CertificateKind, Dispatch, Outcome, Phase, Procedure
from retry_pipeline.service.intake import Accepted
from tests.fakes import (
    COMPLETION,
    INSURANCE,
    NEW_FROM,
    SAFETY,
    TOKYO,
    Harness,
    completion_for,
    continuous,
    insurance,
    new_inspection,
    one_outcome,
    over_sql,
    report,
    safety_for,
    uid,
)

HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make_pipeline(store: RetryStore, db_url: str) -> Iterator[HarnessFactory]:
    engines: list[Engine] = []

    def _make(settings: Settings | None = None) -> Harness:
        engine = make_engine(db_url, write_lock=False)
        engines.append(engine)
        return over_sql(store, store.engine, engine, settings)

    yield _make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def p(make_pipeline: HarnessFactory) -> Harness:
    return make_pipeline()


@pytest.fixture
def p_new(make_pipeline: HarnessFactory) -> Harness:
    """New-inspection retries in force from 2026-12-01 (R1)."""
    return make_pipeline(Settings(new_inspection_retry_from=NEW_FROM))


# -- accept_report: R7, R12, R13 -----------------------------------------------------


def test_r7_report_records_the_chain_and_sends_attempt_1_for_its_slot(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    assert accepted.retry and accepted.created
    assert accepted.next_slot == datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
    assert p.dispatcher.sent == [datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)]
    assert p.dispatcher.count(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)) == 1
    chain = p.live(subject.application)
    assert chain.chain_id == accepted.chain_id
    assert chain.missing == {SAFETY}
    assert chain.attempts_made == 0
    assert chain.cursor.phase is Phase.SAME_DAY
    assert chain.dispatched_for == datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
    assert p.gateway.delivered == []
    assert p.events(subject.application) == ["reported"]


def test_r12_report_with_no_slot_left_waits_for_the_next_opening_tick(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 15, 55, 5, tzinfo=TOKYO))  # Fri, close 16:00
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 15, 55, tzinfo=TOKYO))
    )
    assert accepted.retry
    assert accepted.next_slot == datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO)
    assert p.dispatcher.sent == []  # not a countdown across the weekend (DESIGN 2)
    assert p.live(subject.application).cursor.parked
    p.at(datetime(2026, 11, 27, 16, 0, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == []
    results = p.walk(
        accepted.chain_id, subject.application, [datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO)]
    )
    assert results == ["auto_corrected"]  # R11: exactly one attempt
    assert one_outcome(p).decided_at == datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO)


def test_r13_report_on_sunday_starts_six_attempts_at_monday_opening(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 29, 10, 0, 5, tzinfo=TOKYO))  # Sunday
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 29, 10, 0, tzinfo=TOKYO))
    )
    assert accepted.next_slot == datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO)
    assert p.dispatcher.sent == []  # R13: waits for the 08:30 tick
    assert p.live(subject.application).cursor.phase is Phase.FRESH
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO),
            datetime(2026, 11, 30, 8, 40, tzinfo=TOKYO),
            datetime(2026, 11, 30, 8, 50, tzinfo=TOKYO),
            datetime(2026, 11, 30, 9, 0, tzinfo=TOKYO),
            datetime(2026, 11, 30, 9, 10, tzinfo=TOKYO),
            datetime(2026, 11, 30, 9, 20, tzinfo=TOKYO),
        ],
    )
    assert results == ["next"] * 5 + ["auto_corrected"]
    outcome = one_outcome(p)
    assert outcome.decided_at == datetime(2026, 11, 30, 9, 20, tzinfo=TOKYO)
    assert outcome.missing == ("safety",)


def test_r13_report_before_opening_starts_at_that_days_0830_tick(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 7, 0, 5, tzinfo=TOKYO))  # Fri, before the opening
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 7, 0, tzinfo=TOKYO))
    )
    assert accepted.next_slot == datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO)
    assert p.dispatcher.sent == []
    p.at(datetime(2026, 11, 27, 8, 20, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == []
    p.at(datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == [
        Dispatch(accepted.chain_id, 1, datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO))
    ]


# -- R1 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("procedure", "kind"),
    [(Procedure.CONTINUOUS, COMPLETION), (Procedure.NEW, SAFETY)],
)
def test_r1_pair_that_is_not_a_target_is_refused(
    p_new: Harness, procedure: Procedure, kind: CertificateKind
) -> None:
    subject = new_inspection() if procedure is Procedure.NEW else continuous()
    p_new.at(datetime(2026, 12, 1, 10, 5, 5, tzinfo=TOKYO))
    with pytest.raises(NotARetryTarget):
        p_new.pipeline.accept_report(
            report(subject, {kind}, datetime(2026, 12, 1, 10, 5, tzinfo=TOKYO))
        )
    assert p_new.chain(subject.application) is None
    assert p_new.events(subject.application) == []
    assert p_new.outbox_rows(subject.application) == 0
    assert p_new.dispatcher.sent == []
    assert p_new.gateway.delivered == []


def test_r1_new_inspection_before_its_start_date_is_auto_corrected_at_once(
    p_new: Harness,
) -> None:
    subject = new_inspection()
    p_new.at(datetime(2026, 11, 30, 10, 5, 5, tzinfo=TOKYO))  # the day before NEW_FROM
    accepted = p_new.pipeline.accept_report(
        report(subject, {COMPLETION}, datetime(2026, 11, 30, 10, 5, tzinfo=TOKYO))
    )
    assert not accepted.retry
    assert accepted.next_slot is None
    assert p_new.chain(subject.application) is None
    assert p_new.dispatcher.sent == []
    outcome = one_outcome(p_new)
    assert outcome.application == subject.application
    assert outcome.outcome is Outcome.AUTO_CORRECTED
    assert outcome.decided_at == datetime(2026, 11, 30, 10, 5, tzinfo=TOKYO)
    assert outcome.missing == ("completion",)


def test_r1_new_inspection_is_not_retried_while_no_start_date_is_set(p: Harness) -> None:
    subject = new_inspection()
    p.at(datetime(2026, 12, 1, 10, 5, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {COMPLETION}, datetime(2026, 12, 1, 10, 5, tzinfo=TOKYO))
    )
    assert not accepted.retry
    assert one_outcome(p).decided_at == datetime(2026, 12, 1, 10, 5, tzinfo=TOKYO)


def test_r1_new_inspection_on_its_start_date_is_retried(p_new: Harness) -> None:
    subject = new_inspection()
    p_new.at(datetime(2026, 12, 1, 10, 5, 5, tzinfo=TOKYO))
    accepted = p_new.pipeline.accept_report(
        report(subject, {COMPLETION}, datetime(2026, 12, 1, 10, 5, tzinfo=TOKYO))
    )
    assert accepted.retry and accepted.created
    assert p_new.dispatcher.sent == [datetime(2026, 12, 1, 10, 10, tzinfo=TOKYO)]
    p_new.insert(completion_for(subject, datetime(2026, 12, 1, 10, 8, tzinfo=TOKYO)))
    p_new.insert(
        insurance("INS-9", subject.insurance_no or "", datetime(2026, 12, 1, 9, 0, tzinfo=TOKYO))
    )
    results = p_new.walk(
        accepted.chain_id, subject.application, [datetime(2026, 12, 1, 10, 10, tzinfo=TOKYO)]
    )
    assert results == ["resumed"]
    outcome = one_outcome(p_new)
    assert outcome.outcome is Outcome.RESUMED
    assert outcome.decided_at == datetime(2026, 12, 1, 10, 10, tzinfo=TOKYO)


# -- R3 at report time ---------------------------------------------------------------


def test_r3_confirmed_and_missing_at_report_time_is_auto_corrected_at_once(
    p: Harness,
) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(
            subject,
            {INSURANCE},
            datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO),
            confirmed={SAFETY, INSURANCE},
        )
    )
    assert not accepted.retry and accepted.created
    assert "R3" in accepted.reason
    assert p.chain(subject.application) is None
    assert p.dispatcher.sent == []
    outcome = one_outcome(p)
    assert outcome.application == subject.application
    assert outcome.outcome is Outcome.AUTO_CORRECTED
    assert outcome.decided_at == datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)  # detection
    assert outcome.missing == ("insurance",)
    assert outcome.idempotency_key == f"{accepted.chain_id}:auto_corrected"
    assert p.events(subject.application) == ["auto_corrected"]


def test_r3_duplicate_immediate_report_gives_one_outcome(p: Harness) -> None:
    subject = continuous()
    same = report(
        subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO), confirmed={SAFETY}
    )
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    first = p.pipeline.accept_report(same)
    p.at(datetime(2026, 11, 27, 8, 36, 9, tzinfo=TOKYO))  # a redelivered message
    second = p.pipeline.accept_report(same)
    assert second.chain_id == first.chain_id
    assert not second.retry and not second.created
    assert one_outcome(p).idempotency_key == f"{first.chain_id}:auto_corrected"
    assert p.outbox_rows(subject.application) == 1
    assert p.events(subject.application).count("auto_corrected") == 1
    assert p.pipeline.relay() == 0


# -- R4 --------------------------------------------------------------------------------


def test_r4_second_report_merges_into_the_live_chain_without_restarting_it(
    p_new: Harness,
) -> None:
    subject = new_inspection()
    p_new.at(datetime(2026, 12, 1, 10, 5, 5, tzinfo=TOKYO))
    first = p_new.pipeline.accept_report(
        report(subject, {COMPLETION}, datetime(2026, 12, 1, 10, 5, tzinfo=TOKYO))
    )
    results = p_new.walk(
        first.chain_id, subject.application, [datetime(2026, 12, 1, 10, 10, tzinfo=TOKYO)]
    )
    assert results == ["next"]
    p_new.at(datetime(2026, 12, 1, 10, 12, 5, tzinfo=TOKYO))
    second = p_new.pipeline.accept_report(
        report(subject, {INSURANCE}, datetime(2026, 12, 1, 10, 12, tzinfo=TOKYO))
    )
    assert second.chain_id == first.chain_id
    assert second.retry and not second.created
    assert second.next_slot == datetime(2026, 12, 1, 10, 20, tzinfo=TOKYO)  # R16: not restarted
    chain = p_new.live(subject.application)
    assert chain.missing == {COMPLETION, INSURANCE}
    assert chain.attempts_made == 1
    assert p_new.dispatcher.sent == [
        datetime(2026, 12, 1, 10, 10, tzinfo=TOKYO),
        datetime(2026, 12, 1, 10, 20, tzinfo=TOKYO),  # the merge sent nothing more
    ]
    assert p_new.events(subject.application) == ["reported", "attempt", "merged"]
    # The merged chain re-checks both: the completion certificate alone is not enough.
    p_new.insert(completion_for(subject, datetime(2026, 12, 1, 10, 15, tzinfo=TOKYO)))
    results = p_new.walk(
        first.chain_id, subject.application, [datetime(2026, 12, 1, 10, 20, tzinfo=TOKYO)]
    )
    assert results == ["next"]
    assert p_new.live(subject.application).missing == {INSURANCE}


def test_r3_second_report_missing_a_certificate_confirmed_before_auto_corrects(
    p: Harness,
) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    first = p.pipeline.accept_report(
        report(subject, {INSURANCE}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO), {SAFETY})
    )
    p.at(datetime(2026, 11, 27, 8, 38, 5, tzinfo=TOKYO))
    second = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO))
    )
    assert second.chain_id == first.chain_id
    assert not second.retry
    assert p.chain(subject.application) is None
    outcome = one_outcome(p)
    assert outcome.outcome is Outcome.AUTO_CORRECTED
    assert outcome.decided_at == datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO)
    assert outcome.missing == ("safety",)
    # The message already sent for 08:40 finds the chain ended (R16: one ending).
    p.at(datetime(2026, 11, 27, 8, 40, 1, tzinfo=TOKYO))
    p.deliver(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO))
    assert sum(p.pipeline.run_slot(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)).values()) == 0
    assert len(p.gateway.delivered) == 1
    assert p.outbox_rows(subject.application) == 1


# -- R3 within a chain, and the insurance named by the safety certificate ---------------


def test_r3_found_at_one_attempt_and_missing_at_the_next_auto_corrects_at_once(
    p: Harness,
) -> None:
    subject = continuous()
    p.insert(
        safety_for(
            subject,
            datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO),
            insurance_no=uid("NO"),  # its insurance never arrives: the chain goes on
            deleted_at=datetime(2026, 11, 27, 8, 55, tzinfo=TOKYO),
        )
    )
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
            datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "next"]
    chain = p.live(subject.application)
    assert chain.found == {SAFETY}  # found at attempt 2
    assert chain.missing == {INSURANCE}
    results = p.walk(
        accepted.chain_id, subject.application, [datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO)]
    )
    assert results == ["auto_corrected"]  # attempt 3 of 6: R3, at once
    outcome = one_outcome(p)
    assert outcome.decided_at == datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO)
    assert outcome.missing == ("safety",)
    assert p.chain(subject.application) is None


def test_continuous_insurance_named_by_the_found_safety_certificate_is_checked(
    p: Harness,
) -> None:
    subject = continuous()
    number = uid("NO")
    p.insert(
        safety_for(subject, datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO), insurance_no=number),
        insurance("INS-1", uid("NO"), datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO)),  # not it
        insurance("INS-1", number, datetime(2026, 11, 27, 9, 5, tzinfo=TOKYO)),
    )
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
            datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
            datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO),
            datetime(2026, 11, 27, 9, 10, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "next", "next", "resumed"]
    outcome = one_outcome(p)
    assert outcome.outcome is Outcome.RESUMED
    assert outcome.decided_at == datetime(2026, 11, 27, 9, 10, tzinfo=TOKYO)
    assert outcome.missing == ()


def test_r3_confirmed_insurance_is_checked_again_once_its_safety_certificate_is_found(
    p: Harness,
) -> None:
    # The report confirms the insurance; the safety certificate found at 08:45 names
    # an insurance certificate Kei-MOTAS does not hold: found before, missing now (R3).
    subject = continuous()
    p.insert(safety_for(subject, datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO), insurance_no="X"))
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO), {INSURANCE})
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
            datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "auto_corrected"]
    outcome = one_outcome(p)
    assert outcome.decided_at == datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO)
    assert outcome.missing == ("insurance",)


def test_continuous_confirmed_insurance_present_resumes_when_safety_arrives(p: Harness) -> None:
    subject = continuous()
    number = uid("NO")
    p.insert(
        safety_for(subject, datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO), insurance_no=number),
        insurance("INS-1", number, datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO)),
    )
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO), {INSURANCE})
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
            datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "resumed"]
    assert one_outcome(p).decided_at == datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO)


def test_r3_confirmed_safety_deleted_during_the_chain_auto_corrects_naming_it(
    p: Harness,
) -> None:
    # The example: missing insurance, confirmed safety, detected Mon 10:14; the
    # safety certificate is deleted at 10:33 and the insurance never arrives.
    subject = continuous()
    p.insert(
        safety_for(
            subject,
            datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO),
            insurance_no=uid("NO"),
            deleted_at=datetime(2026, 11, 30, 10, 33, tzinfo=TOKYO),
        )
    )
    p.at(datetime(2026, 11, 30, 10, 14, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {INSURANCE}, datetime(2026, 11, 30, 10, 14, tzinfo=TOKYO), {SAFETY})
    )
    assert accepted.retry
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 30, 10, 20, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 30, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 40, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "next", "auto_corrected"]
    outcome = one_outcome(p)
    assert outcome.outcome is Outcome.AUTO_CORRECTED
    assert outcome.decided_at == datetime(2026, 11, 30, 10, 40, tzinfo=TOKYO)
    assert outcome.missing == ("safety",)
    assert p.attempt_slots(subject.application) == [
        datetime(2026, 11, 30, 10, 20, tzinfo=TOKYO),
        datetime(2026, 11, 30, 10, 30, tzinfo=TOKYO),
        datetime(2026, 11, 30, 10, 40, tzinfo=TOKYO),
    ]
    assert p.chain(subject.application) is None


def test_r3_confirmed_safety_deleted_found_by_the_slot_batch(p: Harness) -> None:
    # The same through run_slot (present_many): one batch, two applications; only the
    # one whose confirmed safety certificate vanished is decided at 10:40.
    gone, kept = continuous(), continuous()
    for subject, deleted in ((gone, datetime(2026, 11, 30, 10, 33, tzinfo=TOKYO)), (kept, None)):
        p.insert(
            safety_for(
                subject,
                datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO),
                insurance_no=uid("NO"),
                deleted_at=deleted,
            )
        )
    p.at(datetime(2026, 11, 30, 10, 14, 5, tzinfo=TOKYO))
    for subject in (gone, kept):
        p.pipeline.accept_report(
            report(subject, {INSURANCE}, datetime(2026, 11, 30, 10, 14, tzinfo=TOKYO), {SAFETY})
        )
    decided = []
    for minute in (20, 30, 40):
        slot = datetime(2026, 11, 30, 10, minute, tzinfo=TOKYO)
        p.at(slot + timedelta(seconds=2))
        counts = p.pipeline.run_slot(slot)
        decided.append((counts["next"], counts[Outcome.AUTO_CORRECTED.value]))
    assert decided == [(2, 0), (2, 0), (1, 1)]
    outcome = one_outcome(p)
    assert (outcome.application, outcome.decided_at, outcome.missing) == (
        gone.application,
        slot,
        ("safety",),
    )
    assert p.live(kept.application).missing == {INSURANCE}


# -- slot messages are idempotent (DESIGN 3) -------------------------------------------------


def test_same_slot_message_twice_the_second_does_nothing(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    p.pipeline.accept_report(report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)))
    slot = datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
    p.at(datetime(2026, 11, 27, 8, 40, 1, tzinfo=TOKYO))
    first = p.pipeline.run_slot(slot)
    assert first["next"] == 1
    p.at(datetime(2026, 11, 27, 8, 40, 3, tzinfo=TOKYO))
    second = p.pipeline.run_slot(slot)  # a duplicate or a redelivery
    assert sum(second.values()) == 0
    chain = p.live(subject.application)
    assert chain.attempts_made == 1
    assert chain.cursor.slot == datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO)
    assert p.events(subject.application).count("attempt") == 1  # R5: attempt 1 logged once
    assert p.dispatcher.sent == [
        datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
        datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),  # attempt 2's countdown, sent once
    ]
    # A slot the chain does not expect (it waits for 08:50) decides nothing.
    p.at(datetime(2026, 11, 27, 9, 0, 1, tzinfo=TOKYO))
    assert sum(p.pipeline.run_slot(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO)).values()) == 0
    assert p.live(subject.application) == chain


def test_slot_message_arriving_before_its_slot_is_sent_again_not_run(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    p.pipeline.accept_report(report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)))
    p.at(datetime(2026, 11, 27, 8, 39, 59, tzinfo=TOKYO))
    slot = datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
    assert sum(p.pipeline.run_slot(slot).values()) == 0
    assert p.dispatcher.sent == [slot, slot]  # sent again, due at its slot
    assert p.live(subject.application).attempts_made == 0
    assert "attempt" not in p.events(subject.application)
    p.at(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO))
    assert p.pipeline.run_slot(slot)["next"] == 1


# -- whole chains ------------------------------------------------------------------------


def test_r9_worked_example_0836_walked_attempt_by_attempt(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    slots = [
        datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
        datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
        datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO),
        datetime(2026, 11, 27, 9, 10, tzinfo=TOKYO),
        datetime(2026, 11, 27, 9, 20, tzinfo=TOKYO),
        datetime(2026, 11, 27, 9, 30, tzinfo=TOKYO),
    ]
    results = p.walk(accepted.chain_id, subject.application, slots)
    assert results == ["next"] * 5 + ["auto_corrected"]
    outcome = one_outcome(p)
    assert outcome.application == subject.application
    assert outcome.office == "OFFICE-A"
    assert outcome.chain_id == accepted.chain_id
    assert outcome.outcome is Outcome.AUTO_CORRECTED
    assert outcome.decided_at == datetime(2026, 11, 27, 9, 30, tzinfo=TOKYO)  # 54 min (R9)
    assert outcome.missing == ("safety",)
    assert outcome.idempotency_key == f"{accepted.chain_id}:auto_corrected"
    assert p.chain(subject.application) is None  # R5: the record is deleted
    assert p.events(subject.application) == ["reported"] + ["attempt"] * 5 + ["auto_corrected"]
    assert p.attempt_slots(subject.application) == slots
    # Nothing more is sent: no 7th attempt, and the outcome is not delivered again.
    p.at(datetime(2026, 11, 27, 9, 40, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == []
    assert len(p.dispatcher.sent) == 6
    assert len(p.gateway.delivered) == 1
    assert p.outbox_rows(subject.application) == 1


def test_r8_found_between_attempts_2_and_3_resumes_at_attempt_3(p: Harness) -> None:
    subject = continuous()
    number = uid("NO")
    p.insert(
        safety_for(subject, datetime(2026, 11, 27, 8, 55, tzinfo=TOKYO), insurance_no=number),
        insurance("INS-1", number, datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO)),
    )
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
            datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
            datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "next", "resumed"]
    outcome = one_outcome(p)
    assert outcome.outcome is Outcome.RESUMED
    assert outcome.decided_at == datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO)
    assert outcome.missing == ()
    assert outcome.idempotency_key == f"{accepted.chain_id}:resumed"
    assert p.chain(subject.application) is None
    assert p.events(subject.application) == ["reported", "attempt", "attempt", "resumed"]
    assert len(p.dispatcher.sent) == 3  # no attempt 4


# -- R10, R11: the close and the next business day ----------------------------------------


def test_r10_close_signal_parks_the_chain_and_r11_next_day_0830_attempt_resumes(
    p: Harness,
) -> None:
    subject = continuous()
    number = uid("NO")
    p.insert(  # arrive overnight
        safety_for(subject, datetime(2026, 11, 30, 18, 0, tzinfo=TOKYO), insurance_no=number),
        insurance("INS-1", number, datetime(2026, 11, 30, 18, 0, tzinfo=TOKYO)),
    )
    p.at(datetime(2026, 11, 30, 10, 5, 5, tzinfo=TOKYO))  # Mon
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 30, 10, 5, tzinfo=TOKYO))
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 30, 10, 10, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 20, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 30, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 40, tzinfo=TOKYO),
        ],
    )
    assert results == ["next"] * 4  # attempt 5 for 10:50 is in flight
    p.at(datetime(2026, 11, 30, 10, 42, tzinfo=TOKYO))
    assert p.pipeline.record_close() == 1  # R10: OSS closes now
    chain = p.live(subject.application)
    assert chain.cursor.parked
    assert chain.cursor.slot == datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO)
    assert chain.attempts_made == 4
    # The countdown already sent for 10:50 does nothing; no tick dispatches that day.
    p.at(datetime(2026, 11, 30, 10, 50, 1, tzinfo=TOKYO))
    p.deliver(datetime(2026, 11, 30, 10, 50, tzinfo=TOKYO))
    assert sum(p.pipeline.run_slot(datetime(2026, 11, 30, 10, 50, tzinfo=TOKYO)).values()) == 0
    assert p.live(subject.application) == chain
    for tick_at in (
        datetime(2026, 11, 30, 10, 50, tzinfo=TOKYO),
        datetime(2026, 11, 30, 16, 0, tzinfo=TOKYO),
    ):
        p.at(tick_at)
        assert p.pipeline.tick().dispatched == []
    # R11: exactly one attempt at 08:30 of the next business day.
    p.at(datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == [
        Dispatch(accepted.chain_id, 5, datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO))
    ]
    p.at(datetime(2026, 12, 1, 8, 30, 30, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == []
    assert p.dispatcher.count(datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO)) == 1
    p.at(datetime(2026, 12, 1, 8, 30, 31, tzinfo=TOKYO))
    p.deliver(datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO))
    assert p.chain(subject.application) is None
    outcome = one_outcome(p)
    assert outcome.outcome is Outcome.RESUMED
    assert outcome.decided_at == datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO)
    assert "parked" in p.events(subject.application)


def test_r11_worked_example_close_signal_1045_auto_corrects_next_day_0830(
    p: Harness,
) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 30, 9, 0, tzinfo=TOKYO))
    assert p.pipeline.record_close(datetime(2026, 11, 30, 10, 45, tzinfo=TOKYO)) == 0
    p.at(datetime(2026, 11, 30, 10, 5, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 30, 10, 5, tzinfo=TOKYO))
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 30, 10, 10, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 20, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 30, tzinfo=TOKYO),
            datetime(2026, 11, 30, 10, 40, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "next", "next", "parked-after"]
    assert p.live(subject.application).cursor.slot == datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO)
    assert len(p.dispatcher.sent) == 4  # nothing sent across the night
    results = p.walk(
        accepted.chain_id, subject.application, [datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO)]
    )
    assert results == ["auto_corrected"]  # R11: the rest of the six is dropped
    outcome = one_outcome(p)
    assert outcome.decided_at == datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO)
    assert p.attempt_slots(subject.application) == [
        datetime(2026, 11, 30, 10, 10, tzinfo=TOKYO),
        datetime(2026, 11, 30, 10, 20, tzinfo=TOKYO),
        datetime(2026, 11, 30, 10, 30, tzinfo=TOKYO),
        datetime(2026, 11, 30, 10, 40, tzinfo=TOKYO),
        datetime(2026, 12, 1, 8, 30, tzinfo=TOKYO),
    ]


def test_r11_worked_example_friday_1525_parks_over_the_weekend(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 15, 25, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 15, 25, tzinfo=TOKYO))
    )
    results = p.walk(
        accepted.chain_id,
        subject.application,
        [
            datetime(2026, 11, 27, 15, 30, tzinfo=TOKYO),
            datetime(2026, 11, 27, 15, 40, tzinfo=TOKYO),
            datetime(2026, 11, 27, 15, 50, tzinfo=TOKYO),
        ],
    )
    assert results == ["next", "next", "parked-after"]
    p.at(datetime(2026, 11, 27, 16, 0, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == []
    results = p.walk(
        accepted.chain_id, subject.application, [datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO)]
    )
    assert results == ["auto_corrected"]
    assert one_outcome(p).decided_at == datetime(2026, 11, 30, 8, 30, tzinfo=TOKYO)


# -- the tick re-dispatches lost countdowns (DESIGN 4) -----------------------------------


def test_tick_resends_a_lost_countdown_only_once_it_is_a_whole_slot_overdue(
    p: Harness,
) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    p.dispatcher.sent.clear()  # the broker lost attempt 1's message
    for in_flight in (
        datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
        datetime(2026, 11, 27, 8, 49, 59, tzinfo=TOKYO),
    ):
        p.at(in_flight)
        assert p.pipeline.tick().dispatched == []
    p.at(datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO))
    again = Dispatch(accepted.chain_id, 1, datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == [again]
    assert p.dispatcher.sent == [datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)]
    # The late attempt judges as of its own slot and sends the next one at once.
    p.at(datetime(2026, 11, 27, 8, 50, 1, tzinfo=TOKYO))
    p.deliver(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO))
    chain = p.live(subject.application)
    assert chain.attempts_made == 1
    assert chain.cursor.slot == datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO)
    assert p.dispatcher.sent == [
        datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO),
        datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO),
    ]
    p.at(datetime(2026, 11, 27, 8, 50, 30, tzinfo=TOKYO))
    assert p.pipeline.tick().dispatched == []  # attempt 2 is in flight
    assert len(p.dispatcher.sent) == 2


# -- the outbox relay (DESIGN 5) ------------------------------------------------------------


def test_relay_delivers_an_immediate_outcome_after_a_gateway_failure(p: Harness) -> None:
    subject = continuous()
    p.gateway.failures = 1
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO), {SAFETY})
    )
    assert p.gateway.delivered == []
    assert p.outbox_rows(subject.application) == 1
    p.at(datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO))
    assert p.pipeline.tick().relayed == 1
    outcome = one_outcome(p)
    assert outcome.idempotency_key == f"{accepted.chain_id}:auto_corrected"
    assert outcome.decided_at == datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
    p.at(datetime(2026, 11, 27, 8, 40, 5, tzinfo=TOKYO))
    assert p.pipeline.relay() == 0
    assert len(p.gateway.delivered) == 1


def test_relay_delivers_an_attempts_outcome_after_a_gateway_failure(p: Harness) -> None:
    subject = continuous()
    number = uid("NO")
    p.insert(
        safety_for(subject, datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO), insurance_no=number),
        insurance("INS-1", number, datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO)),
    )
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    accepted = p.pipeline.accept_report(
        report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO))
    )
    p.gateway.failures = 1
    results = p.walk(
        accepted.chain_id, subject.application, [datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)]
    )
    assert results == ["resumed"]
    assert p.gateway.delivered == []
    p.at(datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO))
    assert p.pipeline.relay() == 1
    outcome = one_outcome(p)
    assert outcome.outcome is Outcome.RESUMED
    assert outcome.idempotency_key == f"{accepted.chain_id}:resumed"
    assert outcome.decided_at == datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)


def test_batch_of_reports_is_one_transaction_with_per_report_outcomes(p: Harness) -> None:
    """accept_reports: R4 merge within a batch, R1/skew refusals do not stop the others."""
    one, two = continuous(), continuous()
    p.at(datetime(2026, 11, 27, 8, 37, tzinfo=TOKYO))
    batch = [
        report(one, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)),
        report(two, {SAFETY}, datetime(2026, 11, 27, 9, 36, tzinfo=TOKYO)),  # an hour ahead
        report(one, {INSURANCE}, datetime(2026, 11, 27, 8, 36, 30, tzinfo=TOKYO)),
    ]
    first, refused, merged = p.pipeline.accept_reports(batch)
    assert isinstance(first, Accepted) and first.created
    assert isinstance(refused, InvalidReport) and "future" in str(refused)
    assert isinstance(merged, Accepted) and merged.chain_id == first.chain_id
    assert not merged.created  # R4: one record per application
    chain = p.live(one.application)
    assert chain.missing == frozenset({SAFETY, INSURANCE})
    assert chain.cursor.slot == datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)
    assert p.chain(two.application) is None
    assert p.events(one.application) == ["reported", "merged"]


def test_batch_report_duplicate_of_a_decided_chain_is_recorded_only(p: Harness) -> None:
    subject = continuous()
    same = report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO), {SAFETY})
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    first, again = p.pipeline.accept_reports([same, same])
    assert isinstance(first, Accepted) and isinstance(again, Accepted)
    assert not first.retry and not again.retry  # R3 at report time, then the duplicate
    assert p.outbox_rows(subject.application) == 1
    assert p.events(subject.application) == ["auto_corrected", "duplicate"]


def test_r14_portal_status_stays_under_review_while_the_chain_is_live(p: Harness) -> None:
    subject = continuous()
    p.at(datetime(2026, 11, 27, 8, 36, 5, tzinfo=TOKYO))
    assert p.pipeline.portal_status(subject.application) is None  # not ours to say
    p.pipeline.accept_report(report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)))
    assert p.pipeline.portal_status(subject.application) == "検査申請審査中"
    for minute in (40, 50):
        p.at(datetime(2026, 11, 27, 8, minute, 1, tzinfo=TOKYO))
        p.pipeline.run_slot(datetime(2026, 11, 27, 8, minute, tzinfo=TOKYO))
        assert p.pipeline.portal_status(subject.application) == "検査申請審査中"
    arrived = datetime(2026, 11, 27, 8, 55, tzinfo=TOKYO)
    p.insert(safety_for(subject, arrived, insurance_no="NO-R14"))
    p.insert(insurance("INS-1", "NO-R14", arrived))
    p.at(datetime(2026, 11, 27, 9, 0, 1, tzinfo=TOKYO))
    p.pipeline.run_slot(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO))
    assert p.chain(subject.application) is None
    assert one_outcome(p).outcome is Outcome.RESUMED
    assert p.pipeline.portal_status(subject.application) is None
