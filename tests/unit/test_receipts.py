"""Receipts (DESIGN 11) over the fakes and over SQLite: one per report taken, in its transaction.

Each test runs over ``tests/fakes.py`` and over a migrated SQLite file with the same
literal expectations (as ``test_service_fakes.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest

from retry_pipeline.adapters.celery_io import receipt_message
from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.errors import InvalidReport
from retry_pipeline.model import PendingReceipt, Receipt, ReceiptStatus
from retry_pipeline.service.receipts import refusal_receipt
from tests.conftest import create_registry_standin_at
from tests.fakes import (
    INSURANCE,
    SAFETY,
    Harness,
    continuous,
    new_inspection,
    over_fakes,
    over_sql,
    report,
    safety_for,
)


def jst(hour: int, minute: int, second: int = 0, day: int = 27) -> pendulum.DateTime:
    return pendulum.datetime(2026, 11, day, hour, minute, second, tz="Asia/Tokyo")


@pytest.fixture(params=["fake", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "fake":
        yield over_fakes()
        return
    url = f"sqlite:///{tmp_path / 'receipts.sqlite3'}"
    upgrade(url)
    create_registry_standin_at(url)  # Kei-MOTAS is external: the test stands in for it
    store = RetryStore.from_url(url)
    registry_engine = make_engine(url, write_lock=False)
    yield over_sql(store, store.engine, registry_engine)
    store.engine.dispose()
    registry_engine.dispose()


def receipts_of(h: Harness, application: str) -> list[Receipt]:
    return [p.receipt for p in h.gateway.receipts if p.receipt.application == application]


def statuses(h: Harness, application: str) -> list[str]:
    return [r.status.value for r in receipts_of(h, application)]


def test_an_accepted_report_gets_a_receipt_with_its_chain(h: Harness) -> None:
    subject = continuous("OFFICE-R")
    h.at(jst(8, 36, 5))
    accepted = h.pipeline.accept_report(report(subject, {SAFETY}, jst(8, 36)))
    assert receipts_of(h, subject.application) == [
        Receipt(
            subject.application, "OFFICE-R", "2026-11-27T08:36:00+09:00",
            ReceiptStatus.ACCEPTED, accepted.chain_id, "R1: retry target",
        )
    ]  # fmt: skip


def test_receipt_message_is_the_contract_of_report_received() -> None:
    receipt = Receipt("A-1", "OSK01", "2026-11-27T08:36:00+09:00", ReceiptStatus.MERGED, "c1", "R4")
    assert receipt_message(PendingReceipt(7, receipt)) == {
        "application": "A-1",
        "office": "OSK01",
        "detected_at": "2026-11-27T08:36:00+09:00",
        "status": "merged",
        "chain_id": "c1",
        "reason": "R4",
    }


def test_merged_then_the_same_report_again_is_a_duplicate_of_the_live_chain(h: Harness) -> None:
    subject = continuous()
    h.at(jst(8, 38))
    first = h.pipeline.accept_report(report(subject, {SAFETY}, jst(8, 36)))
    second = h.pipeline.accept_report(report(subject, {INSURANCE}, jst(8, 37)))
    again = h.pipeline.accept_report(report(subject, {SAFETY}, jst(8, 36)))
    assert statuses(h, subject.application) == ["accepted", "merged", "duplicate"]
    assert {first.chain_id, second.chain_id, again.chain_id} == {first.chain_id}
    assert h.live(subject.application).version == 2  # the re-send changed nothing
    assert h.events(subject.application) == ["reported", "merged", "duplicate"]


def test_a_resent_report_after_an_attempt_found_a_certificate_does_not_end_the_chain(
    h: Harness,
) -> None:
    # Without receipts' key this was R3 ("safety found present earlier, missing now").
    subject = continuous()
    first = report(subject, {SAFETY, INSURANCE}, jst(8, 36))
    h.at(jst(8, 36, 5))
    h.pipeline.accept_report(first)
    h.insert(safety_for(subject, jst(8, 38), insurance_no="NOT-THERE"))
    h.at(jst(8, 40, 2))
    h.pipeline.run_slot(jst(8, 40))
    assert h.live(subject.application).found == frozenset({SAFETY})
    h.at(jst(8, 41))
    again = h.pipeline.accept_report(first)
    assert statuses(h, subject.application) == ["accepted", "duplicate"]
    assert h.live(subject.application).chain_id == again.chain_id
    assert h.gateway.delivered == []  # no outcome


def test_auto_corrected_at_once_then_resent_is_a_duplicate_with_the_same_chain(h: Harness) -> None:
    subject = new_inspection()  # R1: new-inspection retry not in force
    once = report(subject, {INSURANCE}, jst(8, 36))
    h.at(jst(8, 36, 5))
    first = h.pipeline.accept_report(once)
    h.at(jst(8, 50))
    again = h.pipeline.accept_report(once)
    assert statuses(h, subject.application) == ["auto_corrected", "duplicate"]
    assert [r.chain_id for r in receipts_of(h, subject.application)] == [first.chain_id] * 2
    assert again.chain_id == first.chain_id
    assert len(h.gateway.delivered) == 1  # one outcome


def test_a_batch_gives_one_receipt_per_report_in_order(h: Harness) -> None:
    a, b = continuous(), continuous()
    h.at(jst(8, 38))
    results = h.pipeline.accept_reports(
        [
            report(a, {SAFETY}, jst(8, 36)),
            report(b, {SAFETY}, jst(8, 36)),
            report(a, {SAFETY}, jst(8, 36)),  # the same report twice in one message
            report(a, {INSURANCE}, jst(8, 37)),
        ]
    )
    assert not any(isinstance(r, InvalidReport) for r in results)
    assert [(r.application, r.status.value) for r in (p.receipt for p in h.gateway.receipts)] == [
        (a.application, "accepted"),
        (b.application, "accepted"),
        (a.application, "duplicate"),
        (a.application, "merged"),
    ]


def test_a_receipt_the_broker_refused_goes_at_the_next_tick(h: Harness) -> None:
    subject = continuous()
    h.gateway.receipt_failures = 1
    h.at(jst(8, 36, 5))
    h.pipeline.accept_report(report(subject, {SAFETY}, jst(8, 36)))
    assert h.gateway.receipts == []
    h.at(jst(8, 40))
    h.pipeline.tick()
    assert statuses(h, subject.application) == ["accepted"]
    h.at(jst(8, 50))
    h.pipeline.tick()
    assert statuses(h, subject.application) == ["accepted"]  # sent once


def test_a_refused_report_gets_its_receipt_with_the_dead_letter(h: Harness) -> None:
    message = {"application": "A-9", "office": "OSK01", "detected_at": "yesterday"}
    receipt = refusal_receipt(message, "detected_at: not a date")
    h.at(jst(8, 36))
    letter = h.pipeline.keep_dead_letter("retry_pipeline.report_missing", "bad", "{}", receipt)
    assert receipts_of(h, "A-9") == [
        Receipt("A-9", "OSK01", "yesterday", ReceiptStatus.REFUSED, None, "detected_at: not a date")
    ]
    with h.store.unit() as u:
        assert [d.id for d in u.dead_letters.newest(5)] == [letter]
        assert u.receipts.taken(["A-9"]) == {}  # a refusal does not make a re-send a duplicate


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"application": " A-1 ", "detected_at": "2026-11-26T23:36:00Z"},
            "2026-11-27T08:36:00+09:00",
        ),
        ({"application": "A-1", "detected_at": 1764200000}, ""),
        ({"application": "A-1"}, ""),
    ],
)
def test_refusal_receipt_reads_what_it_can(message: dict[str, object], expected: str) -> None:
    receipt = refusal_receipt(message, "why")
    assert receipt is not None
    assert (receipt.application, receipt.detected_at, receipt.chain_id) == ("A-1", expected, None)


@pytest.mark.parametrize("message", [[1, 2], "text", {"application": 5}, {"application": " "}])
def test_a_message_without_an_application_gets_no_receipt(message: object) -> None:
    assert refusal_receipt(message, "why") is None


def test_a_report_received_with_no_chain_or_decision_on_record_is_still_a_duplicate(
    h: Harness,
) -> None:
    subject = continuous()
    taken = Receipt(
        subject.application, subject.office, "2026-11-27T08:36:00+09:00",
        ReceiptStatus.ACCEPTED, "c-gone", "R1: retry target",
    )  # fmt: skip
    with h.store.unit() as u:
        u.receipts.add([taken], jst(8, 36, 5))
    h.at(jst(8, 37))
    again = h.pipeline.accept_report(report(subject, {SAFETY}, jst(8, 36)))
    assert (again.chain_id, again.created) == ("", False)
    assert h.chain(subject.application) is None  # no second chain
