"""``intake.decide_report`` (R1, R3, R4, R7, R12, R13): each Action, with literal Japan times."""

from __future__ import annotations

from datetime import datetime

import pendulum
import pytest

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.config import Settings
from retry_pipeline.intake import Action, Known, ReportDecision, decide_report
from retry_pipeline.model import CertificateKind, Cursor, Phase
from retry_pipeline.rules import Admission, admit_report
from tests.fakes import (
    COMPLETION,
    INSURANCE,
    NEW_FROM,
    SAFETY,
    TOKYO,
    chain_of,
    continuous,
    new_inspection,
    report,
)


def jst(year: int, month: int, day: int, hour: int, minute: int) -> pendulum.DateTime:
    """A Japan-time instant as ``Cursor.slot`` holds it."""
    return pendulum.datetime(year, month, day, hour, minute, tz="Asia/Tokyo")


RETRY = Admission(True, "R1: retry target")
NOTHING_KNOWN = Known()
FRI_0836 = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
SAME_DAY_0840 = Cursor(Phase.SAME_DAY, 0, jst(2026, 11, 27, 8, 40))


@pytest.fixture
def cal() -> BusinessCalendar:
    return BusinessCalendar(Settings())


def decide(
    cal: BusinessCalendar,
    detected_at: datetime,
    known: Known = NOTHING_KNOWN,
    admission: Admission = RETRY,
    signals: tuple[datetime, ...] = (),
) -> ReportDecision:
    return decide_report(
        report(continuous(), {SAFETY}, detected_at), admission, known, cal, signals
    )


# -- START (R7, R12, R13) --------------------------------------------------------------------


def test_start_in_review_hours_first_attempt_at_the_next_grid_slot(cal: BusinessCalendar) -> None:
    d = decide(cal, FRI_0836)
    assert d == ReportDecision(Action.START, "R1: retry target", cursor=SAME_DAY_0840)
    assert d.cursor is not None and d.cursor.slot == datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)


def test_start_on_a_grid_point_waits_for_the_next_one(cal: BusinessCalendar) -> None:
    d = decide(cal, datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO))
    assert d.action is Action.START
    assert d.cursor == Cursor(Phase.SAME_DAY, 0, jst(2026, 11, 27, 8, 50))


def test_r12_start_with_no_slot_before_the_close_is_parked_to_monday(
    cal: BusinessCalendar,
) -> None:
    d = decide(cal, datetime(2026, 11, 27, 15, 55, tzinfo=TOKYO))  # Fri, close 16:00
    assert d.action is Action.START
    assert d.cursor == Cursor(Phase.NEXT_DAY, 0, jst(2026, 11, 30, 8, 30))
    assert d.cursor.parked


def test_r13_start_on_sunday_is_fresh_at_monday_opening(cal: BusinessCalendar) -> None:
    d = decide(cal, datetime(2026, 11, 29, 10, 0, tzinfo=TOKYO))
    assert d.action is Action.START
    assert d.cursor == Cursor(Phase.FRESH, 0, jst(2026, 11, 30, 8, 30))


def test_r13_start_before_the_opening_is_fresh_at_that_days_0830(cal: BusinessCalendar) -> None:
    d = decide(cal, datetime(2026, 11, 27, 7, 0, tzinfo=TOKYO))
    assert d.cursor == Cursor(Phase.FRESH, 0, jst(2026, 11, 27, 8, 30))


def test_r10_start_after_a_close_signal_is_parked_to_the_next_business_day(
    cal: BusinessCalendar,
) -> None:
    close = datetime(2026, 11, 30, 10, 7, tzinfo=TOKYO)  # Mon: OSS closed at 10:07
    d = decide(cal, datetime(2026, 11, 30, 10, 5, tzinfo=TOKYO), signals=(close,))
    assert d.action is Action.START
    assert d.cursor == Cursor(Phase.NEXT_DAY, 0, jst(2026, 12, 1, 8, 30))


def test_start_again_after_the_last_decision_is_a_new_detection(cal: BusinessCalendar) -> None:
    decided = ("c-old", datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO))
    d = decide(cal, FRI_0836, Known(last_decision=decided))
    assert d == ReportDecision(Action.START, "R1: retry target", cursor=SAME_DAY_0840)


# -- DUPLICATE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "detected_at",
    [FRI_0836, datetime(2026, 11, 27, 8, 35, 59, tzinfo=TOKYO)],
    ids=["at-the-decision", "before-it"],
)
def test_duplicate_detected_at_or_before_the_last_decision(
    cal: BusinessCalendar, detected_at: datetime
) -> None:
    d = decide(cal, detected_at, Known(last_decision=("c-old", FRI_0836)))
    assert d == ReportDecision(
        Action.DUPLICATE, "duplicate report: already decided at 2026-11-27T08:36:00+09:00"
    )


def test_duplicate_comes_before_the_admission(cal: BusinessCalendar) -> None:
    """A redelivered report that was auto-corrected at once is a duplicate, not a second one."""
    no = Admission(False, "R3: safety found present earlier and missing now")
    d = decide(cal, FRI_0836, Known(last_decision=("c-old", FRI_0836)), admission=no)
    assert d.action is Action.DUPLICATE


# -- AUTO_CORRECT (R1, R3 at report time) -------------------------------------------------------


def test_auto_correct_when_the_admission_refuses_a_retry(cal: BusinessCalendar) -> None:
    no = Admission(False, "R1: new-inspection retry not in force on the detection date")
    d = decide(cal, FRI_0836, admission=no)
    assert d == ReportDecision(Action.AUTO_CORRECT, no.reason)
    assert d.cursor is None and d.lost == frozenset()


def test_auto_correct_for_a_report_confirmed_and_missing_via_admit_report(
    cal: BusinessCalendar,
) -> None:
    r = report(continuous(), {INSURANCE}, FRI_0836, confirmed={SAFETY, INSURANCE})
    d = decide_report(r, admit_report(r, cal.settings), Known(), cal, ())
    assert d == ReportDecision(
        Action.AUTO_CORRECT, "R3: insurance found present earlier and missing now"
    )


def test_new_inspection_from_its_start_date_starts_a_chain() -> None:
    cal = BusinessCalendar(Settings(new_inspection_retry_from=NEW_FROM))
    before = report(new_inspection(), {COMPLETION}, datetime(2026, 11, 30, 10, 5, tzinfo=TOKYO))
    on = report(new_inspection(), {COMPLETION}, datetime(2026, 12, 1, 10, 5, tzinfo=TOKYO))
    assert decide_report(before, admit_report(before, cal.settings), Known(), cal, ()).action is (
        Action.AUTO_CORRECT
    )
    d = decide_report(on, admit_report(on, cal.settings), Known(), cal, ())
    assert d.action is Action.START
    assert d.cursor == Cursor(Phase.SAME_DAY, 0, jst(2026, 12, 1, 10, 10))


# -- MERGE (R4, R16) and END (R3) with a live chain ------------------------------------------------


def test_merge_into_the_live_chain_keeps_its_cursor(cal: BusinessCalendar) -> None:
    subject = continuous()
    live = chain_of(report(subject, {SAFETY}, FRI_0836), SAME_DAY_0840)
    later = report(subject, {INSURANCE}, datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO))
    d = decide_report(later, RETRY, Known(live=live), cal, ())
    assert d == ReportDecision(Action.MERGE, "R4: merged")
    assert d.cursor is None  # R16: never restarted


def test_merge_even_when_a_decision_came_later(cal: BusinessCalendar) -> None:
    """The live chain decides: the last decision only matters when there is none."""
    subject = continuous()
    live = chain_of(report(subject, {SAFETY}, FRI_0836), SAME_DAY_0840)
    again = report(subject, {SAFETY}, FRI_0836)
    known = Known(live=live, last_decision=("c-old", datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO)))
    assert decide_report(again, RETRY, known, cal, ()).action is Action.MERGE


# -- a report taken before (DESIGN 11: the durable sender re-sends until its receipt) ---------


@pytest.mark.parametrize("found", [set(), {SAFETY}], ids=["nothing-found", "found-by-an-attempt"])
def test_a_report_already_received_is_a_duplicate_of_the_live_chain(
    cal: BusinessCalendar, found: set[CertificateKind]
) -> None:
    subject = continuous()
    first = report(subject, {SAFETY, INSURANCE}, FRI_0836)
    live = chain_of(first, SAME_DAY_0840, found=found)
    d = decide_report(first, RETRY, Known(live=live, received=frozenset({FRI_0836})), cal, ())
    assert d == ReportDecision(Action.DUPLICATE, "duplicate report: already received")


def test_another_detection_time_of_the_same_application_still_merges(
    cal: BusinessCalendar,
) -> None:
    subject = continuous()
    live = chain_of(report(subject, {SAFETY}, FRI_0836), SAME_DAY_0840)
    later = report(subject, {SAFETY}, datetime(2026, 11, 27, 8, 37, tzinfo=TOKYO))
    known = Known(live=live, received=frozenset({FRI_0836}))
    assert decide_report(later, RETRY, known, cal, ()).action is Action.MERGE


def test_a_report_already_received_without_chain_or_decision_is_a_duplicate(
    cal: BusinessCalendar,
) -> None:
    d = decide(cal, FRI_0836, Known(received=frozenset({FRI_0836})))
    assert d == ReportDecision(Action.DUPLICATE, "duplicate report: already received")


@pytest.mark.parametrize(
    ("found", "confirmed_before", "confirmed_now"),
    [({SAFETY}, set(), set()), (set(), {SAFETY}, set()), (set(), set(), {SAFETY})],
    ids=["found-by-an-attempt", "confirmed-by-the-first-report", "confirmed-by-this-report"],
)
def test_r3_end_when_a_certificate_seen_present_is_missing_now(
    cal: BusinessCalendar,
    found: set[CertificateKind],
    confirmed_before: set[CertificateKind],
    confirmed_now: set[CertificateKind],
) -> None:
    subject = continuous()
    first = report(subject, {INSURANCE}, FRI_0836, confirmed=confirmed_before)
    live = chain_of(first, SAME_DAY_0840, found=found)
    now = report(
        subject,
        {SAFETY},
        datetime(2026, 11, 27, 8, 38, tzinfo=TOKYO),
        confirmed=confirmed_now,
    )
    d = decide_report(now, RETRY, Known(live=live), cal, ())
    assert d == ReportDecision(
        Action.END, "R3: safety found present earlier, missing now", lost=frozenset({SAFETY})
    )


def test_r3_end_names_every_lost_certificate_in_order(cal: BusinessCalendar) -> None:
    subject = continuous()
    live = chain_of(
        report(subject, {SAFETY}, FRI_0836, confirmed={INSURANCE}),
        SAME_DAY_0840,
        found={SAFETY},
    )
    now = report(subject, {INSURANCE, SAFETY}, datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO))
    d = decide_report(now, RETRY, Known(live=live), cal, ())
    assert d.action is Action.END
    assert d.reason == "R3: safety, insurance found present earlier, missing now"
    assert d.lost == {SAFETY, INSURANCE}
