"""``intake.decide_report``: R3 across reports, conflicting reports (R4), late and stale reports
(R4a), with literal Japan times. Fri 2026-11-27 and Mon 2026-11-30 are business days."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
import pytest

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.config import Settings
from retry_pipeline.errors import ConfigError
from retry_pipeline.intake import Action, Known, ReportDecision, decide_report, duration
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    Cursor,
    Phase,
    Procedure,
    Report,
)
from retry_pipeline.rules import Admission, admit_report

TOKYO = ZoneInfo("Asia/Tokyo")
SAFETY, INSURANCE, COMPLETION = (
    CertificateKind.SAFETY,
    CertificateKind.INSURANCE,
    CertificateKind.COMPLETION,
)
RETRY = Admission(True, "R1: retry target")


def fri(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 11, 27, hour, minute, second, tzinfo=TOKYO)


def mon(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 11, 30, hour, minute, second, tzinfo=TOKYO)


def jst(day: datetime, hour: int, minute: int) -> pendulum.DateTime:
    return pendulum.datetime(day.year, day.month, day.day, hour, minute, tz="Asia/Tokyo")


def subject(**changes: str | Procedure | None) -> Application:
    fields: dict[str, object] = {
        "application": "OSS-2026-000123",
        "office": "KEI-OSAKA",
        "procedure": Procedure.CONTINUOUS,
        "vehicle": "JA11-123456",
        "insurer_id": None,
        "insurance_no": None,
    }
    fields.update(changes)
    return Application(**fields)  # type: ignore[arg-type]


def report(
    missing: set[CertificateKind],
    detected_at: datetime,
    confirmed: set[CertificateKind] | None = None,
    of: Application | None = None,
) -> Report:
    return Report(of or subject(), frozenset(missing), frozenset(confirmed or ()), detected_at)


def live_chain(first: Report, cursor: Cursor, found: set[CertificateKind] | None = None) -> Chain:
    chain = Chain.from_report("c-live", first, cursor)
    return replace(chain, found=frozenset(found or ()))


@pytest.fixture
def cal() -> BusinessCalendar:
    return BusinessCalendar(Settings())


SAME_DAY_0840 = Cursor(Phase.SAME_DAY, 0, jst(fri(0, 0), 8, 40))


# -- R3 across reports -------------------------------------------------------------------------


def test_r3_a_report_naming_a_certificate_found_by_an_earlier_chain_is_auto_corrected_at_once(
    cal: BusinessCalendar,
) -> None:
    """The issue's example: an attempt found safety, the application resumed at 09:40; a
    report at 09:44 says safety is missing."""
    known = Known(last_decision=("c-first", fri(9, 40)), found_before=frozenset({SAFETY}))
    r = report({SAFETY}, fri(9, 44))
    d = decide_report(r, RETRY, known, cal, (), arrived_at=fri(9, 44, 1))
    assert d == ReportDecision(
        Action.AUTO_CORRECT,
        "R3: safety found present earlier, missing now",
        lost=frozenset({SAFETY}),
    )


def test_r3_across_reports_names_only_what_was_found_before(cal: BusinessCalendar) -> None:
    known = Known(last_decision=("c-first", fri(9, 40)), found_before=frozenset({INSURANCE}))
    d = decide_report(report({SAFETY, INSURANCE}, fri(10, 5)), RETRY, known, cal, ())
    assert d.action is Action.AUTO_CORRECT
    assert d.reason == "R3: insurance found present earlier, missing now"
    assert d.lost == {INSURANCE}


def test_r3_across_reports_a_redelivered_report_stays_a_duplicate(cal: BusinessCalendar) -> None:
    """The report that started the first chain, delivered again: no second outcome."""
    known = Known(last_decision=("c-first", fri(9, 40)), found_before=frozenset({SAFETY}))
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, known, cal, ())
    assert d == ReportDecision(
        Action.DUPLICATE, "duplicate report: already decided at 2026-11-27T09:40:00+09:00"
    )


def test_r3_across_reports_with_a_live_chain_ends_it(cal: BusinessCalendar) -> None:
    """Found by an earlier chain, the live chain (another certificate) does not know it."""
    live = live_chain(
        report({INSURANCE}, fri(10, 1)), Cursor(Phase.SAME_DAY, 0, jst(fri(0, 0), 10, 10))
    )
    known = Known(live=live, found_before=frozenset({SAFETY}))
    d = decide_report(report({SAFETY}, fri(10, 3)), RETRY, known, cal, ())
    assert d == ReportDecision(
        Action.END, "R3: safety found present earlier, missing now", lost=frozenset({SAFETY})
    )


def test_a_new_chain_carries_what_earlier_chains_found_so_attempts_check_it_again(
    cal: BusinessCalendar,
) -> None:
    known = Known(last_decision=("c-first", fri(9, 40)), found_before=frozenset({INSURANCE}))
    d = decide_report(report({SAFETY}, fri(10, 5)), RETRY, known, cal, ())
    assert d == ReportDecision(
        Action.START,
        "R1: retry target",
        cursor=Cursor(Phase.SAME_DAY, 0, jst(fri(0, 0), 10, 10)),
        carried=frozenset({INSURANCE}),
    )


def test_only_the_procedures_certificates_are_carried(cal: BusinessCalendar) -> None:
    known = Known(found_before=frozenset({COMPLETION, INSURANCE}))
    d = decide_report(report({SAFETY}, fri(10, 5)), RETRY, known, cal, ())
    assert d.carried == {INSURANCE}


def test_r1_auto_correction_keeps_its_reason_before_r3(cal: BusinessCalendar) -> None:
    no = Admission(False, "R1: new-inspection retry not in force on the detection date")
    known = Known(found_before=frozenset({INSURANCE}))
    d = decide_report(report({INSURANCE}, fri(10, 5)), no, known, cal, ())
    assert d == ReportDecision(Action.AUTO_CORRECT, no.reason)


def test_nothing_found_before_starts_as_ever(cal: BusinessCalendar) -> None:
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(), cal, (), arrived_at=fri(8, 36))
    assert d == ReportDecision(Action.START, "R1: retry target", cursor=SAME_DAY_0840)


# -- conflicting reports (R4) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"office": "KEI-KOBE"},
            "conflicting report (R4): OSS-2026-000123 has a live chain with office KEI-OSAKA "
            "(this report: KEI-KOBE); refused, the live chain is unchanged",
        ),
        (
            {"vehicle": "JA22-999999"},
            "conflicting report (R4): OSS-2026-000123 has a live chain with vehicle JA11-123456 "
            "(this report: JA22-999999); refused, the live chain is unchanged",
        ),
        (
            {"procedure": Procedure.NEW, "insurer_id": "INS-1", "insurance_no": "NO-1"},
            "conflicting report (R4): OSS-2026-000123 has a live chain with procedure continuous "
            "(this report: new); insurer_id none (this report: INS-1); insurance_no none "
            "(this report: NO-1); refused, the live chain is unchanged",
        ),
    ],
    ids=["office", "vehicle", "procedure"],
)
def test_a_report_contradicting_the_live_record_is_refused(
    cal: BusinessCalendar, changes: dict[str, str], reason: str
) -> None:
    live = live_chain(report({SAFETY}, fri(8, 36)), SAME_DAY_0840)
    other = subject(**changes)
    missing = {COMPLETION} if other.procedure is Procedure.NEW else {SAFETY}
    d = decide_report(report(missing, fri(8, 38), of=other), RETRY, Known(live=live), cal, ())
    assert d == ReportDecision(Action.REFUSE, reason)


def test_a_conflict_is_refused_even_when_it_names_a_certificate_found_before(
    cal: BusinessCalendar,
) -> None:
    live = live_chain(report({INSURANCE}, fri(8, 36)), SAME_DAY_0840, found={SAFETY})
    d = decide_report(
        report({SAFETY}, fri(8, 38), of=subject(office="KEI-KOBE")),
        RETRY,
        Known(live=live),
        cal,
        (),
    )
    assert d.action is Action.REFUSE


def test_a_report_that_only_adds_missing_certificates_still_merges(cal: BusinessCalendar) -> None:
    live = live_chain(report({SAFETY}, fri(8, 36)), SAME_DAY_0840)
    d = decide_report(report({INSURANCE}, fri(8, 38)), RETRY, Known(live=live), cal, ())
    assert d == ReportDecision(Action.MERGE, "R4: merged")


def test_without_a_live_chain_another_office_is_a_new_application_record(
    cal: BusinessCalendar,
) -> None:
    """R4 compares with the live record only; after a decision a report starts afresh."""
    known = Known(last_decision=("c-first", fri(9, 30)))
    d = decide_report(report({SAFETY}, fri(10, 5), of=subject(office="KEI-KOBE")), RETRY, known,
                      cal, ())  # fmt: skip
    assert d.action is Action.START


# -- late reports (R4a) ----------------------------------------------------------------------------


def test_r4a_the_issues_example_detected_0836_arriving_1000_is_planned_from_1000(
    cal: BusinessCalendar,
) -> None:
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(), cal, (), arrived_at=fri(10, 0))
    assert d == ReportDecision(
        Action.START,
        "R1: retry target; R4a: reached the pipeline 1 h 24 min after its detection, "
        "planned from its arrival 2026-11-27T10:00:00+09:00",
        cursor=Cursor(Phase.SAME_DAY, 0, jst(fri(0, 0), 10, 10)),
        late_s=5040,
    )


@pytest.mark.parametrize(
    ("arrived_at", "first_slot"),
    [
        (fri(8, 39), fri(8, 40)),  # before its first slot
        (fri(8, 45), fri(8, 40)),  # the first slot passed, by less than a step
        (fri(8, 50), fri(8, 40)),  # by exactly one step: not more
        (fri(8, 50, 1), fri(9, 0)),  # by more than one step: planned from 08:50:01
    ],
    ids=["before", "within-a-step", "one-step", "more-than-a-step"],
)
def test_r4a_late_only_when_the_first_slot_passed_by_more_than_one_step(
    cal: BusinessCalendar, arrived_at: datetime, first_slot: datetime
) -> None:
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(), cal, (), arrived_at=arrived_at)
    assert d.cursor is not None and d.cursor.slot == first_slot
    assert d.cursor.phase is Phase.SAME_DAY
    assert (d.late_s is not None) == (first_slot == fri(9, 0))


def test_r4a_arriving_after_the_close_is_planned_as_an_off_hours_detection(
    cal: BusinessCalendar,
) -> None:
    """R13: nothing was tried yet, so six attempts from the next opening (Mon 08:30)."""
    d = decide_report(report({SAFETY}, fri(15, 25)), RETRY, Known(), cal, (), arrived_at=fri(17, 0))
    assert d.cursor == Cursor(Phase.FRESH, 0, jst(mon(0, 0), 8, 30))
    assert d.late_s == 5700


def test_r4a_an_r12_detection_arriving_before_its_0830_slot_is_not_late(
    cal: BusinessCalendar,
) -> None:
    d = decide_report(
        report({SAFETY}, fri(15, 55)), RETRY, Known(), cal, (), arrived_at=fri(16, 30)
    )
    assert d.cursor == Cursor(Phase.NEXT_DAY, 0, jst(mon(0, 0), 8, 30))
    assert d.late_s is None


def test_r4a_an_r12_detection_arriving_after_monday_opening_is_planned_from_arrival() -> None:
    """Over a weekend: stale under the default limit (one day of wall time), planned from
    its arrival under a longer one."""
    r = report({SAFETY}, fri(15, 55))
    default = decide_report(r, RETRY, Known(), BusinessCalendar(Settings()), (),
                            arrived_at=mon(9, 0))  # fmt: skip
    assert default.action is Action.REFUSE
    assert default.reason.startswith("stale report (R4a): detected at 2026-11-27T15:55:00+09:00")
    longer = BusinessCalendar(Settings(stale_after_s=4 * 86_400))
    d = decide_report(r, RETRY, Known(), longer, (), arrived_at=mon(9, 0))
    assert d.cursor == Cursor(Phase.SAME_DAY, 0, jst(mon(0, 0), 9, 10))
    assert d.late_s == 2 * 86_400 + 17 * 3600 + 5 * 60


@pytest.mark.parametrize(
    ("arrived_at", "cursor"),
    [
        (mon(8, 35), Cursor(Phase.FRESH, 0, jst(mon(0, 0), 8, 30))),
        (mon(8, 45), Cursor(Phase.SAME_DAY, 0, jst(mon(0, 0), 8, 50))),
    ],
    ids=["within-a-step-of-0830", "after-0840"],
)
def test_r4a_an_r13_sunday_detection(
    cal: BusinessCalendar, arrived_at: datetime, cursor: Cursor
) -> None:
    sunday = datetime(2026, 11, 29, 10, 0, tzinfo=TOKYO)
    d = decide_report(report({SAFETY}, sunday), RETRY, Known(), cal, (), arrived_at=arrived_at)
    assert d.cursor == cursor


def test_r4a_a_late_report_merging_into_a_live_chain_never_moves_it(cal: BusinessCalendar) -> None:
    live = live_chain(report({SAFETY}, fri(8, 36)), SAME_DAY_0840)
    d = decide_report(report({INSURANCE}, fri(8, 37)), RETRY, Known(live=live), cal, (),
                      arrived_at=fri(10, 0))  # fmt: skip
    assert d == ReportDecision(Action.MERGE, "R4: merged")


# -- stale reports (R4a) ---------------------------------------------------------------------------

STALE = (
    "stale report (R4a): detected at 2026-11-27T08:36:00+09:00, more than 1 d before it "
    "reached the pipeline; the examination side must check again"
)


def test_r4a_a_report_older_than_a_day_is_refused_as_stale(cal: BusinessCalendar) -> None:
    arrived = fri(8, 36) + timedelta(days=1, seconds=1)
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(), cal, (), arrived_at=arrived)
    assert d == ReportDecision(Action.REFUSE, STALE)


def test_r4a_exactly_a_day_old_is_not_stale_but_late(cal: BusinessCalendar) -> None:
    arrived = fri(8, 36) + timedelta(days=1)  # Sat 08:36: planned as an R13 detection
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(), cal, (), arrived_at=arrived)
    assert d.action is Action.START
    assert d.cursor == Cursor(Phase.FRESH, 0, jst(mon(0, 0), 8, 30))
    assert d.late_s == 86_400


def test_r4a_a_report_from_1970_is_stale(cal: BusinessCalendar) -> None:
    old = report({SAFETY}, datetime(1970, 1, 1, 9, 0, tzinfo=TOKYO))
    d = decide_report(old, RETRY, Known(), cal, (), arrived_at=fri(10, 0))
    assert d.action is Action.REFUSE
    assert d.reason.startswith("stale report (R4a): detected at 1970-01-01T09:00:00+09:00")


def test_r4a_the_limit_is_a_setting() -> None:
    cal = BusinessCalendar(Settings(stale_after_s=3600))
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(), cal, (), arrived_at=fri(9, 37))
    assert d.action is Action.REFUSE
    assert "more than 1 h before it reached the pipeline" in d.reason


def test_r4a_a_stale_redelivery_stays_a_duplicate(cal: BusinessCalendar) -> None:
    known = Known(last_decision=("c-first", fri(9, 30)))
    arrived = fri(8, 36) + timedelta(days=3)
    d = decide_report(report({SAFETY}, fri(8, 36)), RETRY, known, cal, (), arrived_at=arrived)
    assert d.action is Action.DUPLICATE


def test_r4a_a_stale_report_that_repeats_the_live_record_merges_and_one_that_adds_is_refused(
    cal: BusinessCalendar,
) -> None:
    """A chain parked over a long holiday may outlive the limit; its own report, sent
    again, adds nothing. A stale report adding a certificate is refused."""
    live = live_chain(report({SAFETY}, fri(8, 36)), SAME_DAY_0840)
    arrived = fri(8, 36) + timedelta(days=2)
    again = decide_report(report({SAFETY}, fri(8, 36)), RETRY, Known(live=live), cal, (),
                          arrived_at=arrived)  # fmt: skip
    adds = decide_report(report({INSURANCE}, fri(8, 36)), RETRY, Known(live=live), cal, (),
                         arrived_at=arrived)  # fmt: skip
    assert again == ReportDecision(Action.MERGE, "R4: merged")
    assert adds == ReportDecision(Action.REFUSE, STALE)


def test_r4a_without_an_arrival_nothing_is_late_or_stale(cal: BusinessCalendar) -> None:
    r = report({SAFETY}, datetime(1970, 1, 1, 9, 0, tzinfo=TOKYO))
    assert decide_report(r, admit_report(r, cal.settings), Known(), cal, ()).action is (
        Action.START
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (5040, "1 h 24 min"),
        (86_400, "1 d"),
        (90_061, "1 d 1 h 1 min 1 s"),
    ],
)
def test_duration_text(seconds: int, text: str) -> None:
    assert duration(seconds) == text


def test_stale_after_setting_from_the_environment() -> None:
    assert Settings.from_env({}).stale_after_s == 86_400
    assert Settings.from_env({"RETRY_PIPELINE_STALE_AFTER_S": "7200"}).stale_after_s == 7200
    with pytest.raises(ConfigError, match="STALE_AFTER_S must be an integer"):
        Settings.from_env({"RETRY_PIPELINE_STALE_AFTER_S": "a day"})
    with pytest.raises(ConfigError, match="STALE_AFTER_S must be > 0"):
        Settings.from_env({"RETRY_PIPELINE_STALE_AFTER_S": "0"})


def test_the_live_chains_own_report_delivered_again_merges_after_an_attempt_found_part_of_it(
    cal: BusinessCalendar,
) -> None:
    """Not R3: the certificate was found after this report was made (a redelivery)."""
    first = report({SAFETY, INSURANCE}, fri(8, 36))
    live = live_chain(first, SAME_DAY_0840, found={INSURANCE})
    live = replace(live, missing=frozenset({SAFETY}))
    d = decide_report(first, RETRY, Known(live=live, found_before=frozenset({INSURANCE})), cal,
                      (), arrived_at=fri(9, 5))  # fmt: skip
    assert d == ReportDecision(Action.MERGE, "R4: merged")


def test_a_later_report_naming_a_certificate_found_since_still_ends_the_chain(
    cal: BusinessCalendar,
) -> None:
    live = replace(
        live_chain(report({SAFETY, INSURANCE}, fri(8, 36)), SAME_DAY_0840, found={INSURANCE}),
        missing=frozenset({SAFETY}),
    )
    d = decide_report(report({INSURANCE}, fri(8, 51)), RETRY, Known(live=live), cal, ())
    assert d.action is Action.END
    assert d.lost == {INSURANCE}
