"""Certificate rules R1–R3: targets, admission, validity and presence."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidReport, NotARetryTarget
from retry_pipeline.model import (
    Application,
    CertificateKind,
    CompletionCertificate,
    InsuranceCertificate,
    Procedure,
    Report,
    SafetyCertificate,
)
from retry_pipeline.rules import (
    CertificateSet,
    admit_report,
    check_targets,
    completion_valid_through,
    is_usable,
    judge_presence,
    safety_valid_through,
    valid_completion,
    valid_safety,
)

JST = ZoneInfo("Asia/Tokyo")
SAFETY = CertificateKind.SAFETY
INSURANCE = CertificateKind.INSURANCE
COMPLETION = CertificateKind.COMPLETION


def jst(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=JST)


def kinds(*k: CertificateKind) -> frozenset[CertificateKind]:
    return frozenset(k)


DETECTED = datetime(2026, 11, 27, 8, 36, tzinfo=JST)
SAFETY_AVAILABLE = datetime(2026, 11, 1, 12, 0, tzinfo=JST)  # copied to Kei-MOTAS on day 1
INSURANCE_AVAILABLE = datetime(2026, 1, 1, 12, 0, tzinfo=JST)
COMPLETION_AVAILABLE = datetime(2026, 1, 15, 12, 0, tzinfo=JST)

CONTINUOUS_APP = Application("OSS-C-1", "office-A", Procedure.CONTINUOUS, "CHASSIS-1")
NEW_APP = Application(
    "OSS-N-1", "office-A", Procedure.NEW, "CHASSIS-2", insurer_id="INS-9", insurance_no="N-900"
)


def report(
    subject: Application,
    missing: frozenset[CertificateKind],
    confirmed: frozenset[CertificateKind] = frozenset(),
    detected_at: datetime = DETECTED,
) -> Report:
    return Report(subject, missing, confirmed, detected_at)


# --- R1 targets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("procedure", "missing"),
    [
        (Procedure.CONTINUOUS, kinds(SAFETY)),
        (Procedure.CONTINUOUS, kinds(INSURANCE)),
        (Procedure.CONTINUOUS, kinds(SAFETY, INSURANCE)),
        (Procedure.NEW, kinds(COMPLETION)),
        (Procedure.NEW, kinds(INSURANCE)),
        (Procedure.NEW, kinds(COMPLETION, INSURANCE)),
    ],
)
def test_r1_targets_are_accepted(procedure: Procedure, missing: frozenset[CertificateKind]) -> None:
    check_targets(procedure, missing)  # no exception


@pytest.mark.parametrize(
    ("procedure", "missing", "foreign"),
    [
        (Procedure.CONTINUOUS, kinds(COMPLETION), "completion"),
        (Procedure.CONTINUOUS, kinds(SAFETY, COMPLETION), "completion"),
        (Procedure.NEW, kinds(SAFETY), "safety"),
        (Procedure.NEW, kinds(SAFETY, INSURANCE), "safety"),
    ],
)
def test_r1_other_pairs_are_refused(
    procedure: Procedure, missing: frozenset[CertificateKind], foreign: str
) -> None:
    with pytest.raises(NotARetryTarget, match=foreign) as info:
        check_targets(procedure, missing)
    assert procedure.value in str(info.value)
    assert isinstance(info.value, InvalidReport)


def test_r1_admit_refuses_continuous_completion(settings: Settings) -> None:
    with pytest.raises(NotARetryTarget, match="completion"):
        admit_report(report(CONTINUOUS_APP, kinds(COMPLETION)), settings)


def test_r1_admit_refuses_new_safety() -> None:
    in_force = Settings(new_inspection_retry_from=date(2026, 1, 1))
    with pytest.raises(NotARetryTarget, match="safety"):
        admit_report(report(NEW_APP, kinds(SAFETY)), in_force)


@pytest.mark.parametrize("missing", [kinds(SAFETY), kinds(INSURANCE), kinds(SAFETY, INSURANCE)])
def test_r1_continuous_is_retried(settings: Settings, missing: frozenset[CertificateKind]) -> None:
    admission = admit_report(report(CONTINUOUS_APP, missing), settings)
    assert admission.retry is True
    assert "R1" in admission.reason


def test_r1_continuous_retried_whatever_the_new_inspection_start() -> None:
    late_start = Settings(new_inspection_retry_from=date(2030, 1, 1))
    assert admit_report(report(CONTINUOUS_APP, kinds(SAFETY)), late_start).retry is True


def test_r1_new_inspection_not_retried_while_start_unset(settings: Settings) -> None:
    assert settings.new_inspection_retry_from is None
    admission = admit_report(report(NEW_APP, kinds(COMPLETION)), settings)
    assert admission.retry is False
    assert "R1" in admission.reason


@pytest.mark.parametrize(
    ("detected_at", "retry"),
    [
        (jst(2026, 11, 30, 23, 59, 59), False),  # the day before the start
        (jst(2026, 12, 1, 0, 0), True),  # the start date itself
        (jst(2026, 12, 1, 10, 0), True),
        (jst(2027, 4, 1, 10, 0), True),  # after
        (jst(2025, 12, 1, 10, 0), False),  # long before
        # The date is the Tokyo date: 2026-11-30T15:00Z is 12-01 00:00 JST.
        (datetime(2026, 11, 30, 15, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 30, 14, 59, 59, tzinfo=UTC), False),
    ],
)
def test_r1_new_inspection_start_date(detected_at: datetime, retry: bool) -> None:
    s = Settings(new_inspection_retry_from=date(2026, 12, 1))
    for missing in (kinds(COMPLETION), kinds(INSURANCE), kinds(COMPLETION, INSURANCE)):
        admission = admit_report(report(NEW_APP, missing, detected_at=detected_at), s)
        assert admission.retry is retry


# --- R3 exclusion ---------------------------------------------------------------------------


def test_r3_confirmed_then_missing_is_not_retried(settings: Settings) -> None:
    admission = admit_report(
        report(CONTINUOUS_APP, kinds(INSURANCE), confirmed=kinds(INSURANCE)), settings
    )
    assert admission.retry is False
    assert "R3" in admission.reason
    assert "insurance" in admission.reason


def test_r3_one_reappeared_kind_stops_the_whole_report(settings: Settings) -> None:
    admission = admit_report(
        report(CONTINUOUS_APP, kinds(SAFETY, INSURANCE), confirmed=kinds(SAFETY)), settings
    )
    assert admission.retry is False
    assert "safety" in admission.reason


def test_r3_other_confirmed_kind_does_not_stop_retry(settings: Settings) -> None:
    admission = admit_report(
        report(CONTINUOUS_APP, kinds(INSURANCE), confirmed=kinds(SAFETY)), settings
    )
    assert admission.retry is True


def test_r3_applies_to_new_inspection_in_force() -> None:
    s = Settings(new_inspection_retry_from=date(2026, 1, 1))
    assert admit_report(report(NEW_APP, kinds(COMPLETION)), s).retry is True
    excluded = admit_report(report(NEW_APP, kinds(COMPLETION), confirmed=kinds(COMPLETION)), s)
    assert excluded.retry is False
    assert "R3" in excluded.reason


# --- R2 validity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inspected_on", "through"),
    [
        (date(2026, 11, 1), date(2026, 11, 15)),  # inspection date is day 1 of 15
        (date(2026, 11, 20), date(2026, 12, 4)),
        (date(2026, 12, 20), date(2027, 1, 3)),
        (date(2028, 2, 20), date(2028, 3, 5)),  # leap year: 29 days in February
    ],
)
def test_r2_safety_valid_through(settings: Settings, inspected_on: date, through: date) -> None:
    assert safety_valid_through(inspected_on, settings) == through


def test_r2_safety_validity_is_configurable() -> None:
    assert safety_valid_through(date(2026, 11, 1), Settings(safety_validity_days=1)) == date(
        2026, 11, 1
    )
    assert safety_valid_through(date(2026, 11, 1), Settings(safety_validity_days=30)) == date(
        2026, 11, 30
    )


@pytest.mark.parametrize(
    ("issued_on", "through"),
    [
        (date(2026, 1, 15), date(2026, 10, 14)),  # issue date as day 1
        (date(2026, 3, 31), date(2026, 12, 30)),  # 12-31 exists: the day before it
        (date(2026, 4, 30), date(2027, 1, 29)),
        (date(2026, 6, 30), date(2027, 3, 29)),
        (date(2026, 5, 28), date(2027, 2, 27)),  # 2027-02-28 exists: the day before it
    ],
)
def test_r2_completion_valid_through(settings: Settings, issued_on: date, through: date) -> None:
    assert completion_valid_through(issued_on, settings) == through


@pytest.mark.parametrize(
    ("issued_on", "through"),
    [
        # Nine months on from the 29th–31st of May there is no matching day in February:
        # the period then ends on the last day of that month (the usual reading, as in
        # Japanese Civil Code art. 143(2)), not one day earlier.
        (date(2026, 5, 31), date(2027, 2, 28)),
        (date(2026, 5, 29), date(2027, 2, 28)),
        (date(2027, 5, 31), date(2028, 2, 29)),  # leap year
    ],
)
def test_r2_completion_valid_through_end_of_month_clamp(
    settings: Settings, issued_on: date, through: date
) -> None:
    assert completion_valid_through(issued_on, settings) == through


def test_r2_completion_validity_is_configurable() -> None:
    assert completion_valid_through(
        date(2026, 1, 15), Settings(completion_validity_months=1)
    ) == date(2026, 2, 14)
    assert completion_valid_through(
        date(2026, 1, 15), Settings(completion_validity_months=12)
    ) == date(2027, 1, 14)


def safety_cert(
    id: str = "S-1",
    inspected_on: date = date(2026, 11, 1),
    insurer_id: str = "INS-1",
    insurance_no: str = "N-100",
    available_at: datetime = SAFETY_AVAILABLE,
    used_by: str | None = None,
    deleted_at: datetime | None = None,
) -> SafetyCertificate:
    return SafetyCertificate(
        id, "CHASSIS-1", inspected_on, insurer_id, insurance_no, available_at, used_by, deleted_at
    )


def insurance_cert(
    insurer_id: str = "INS-1",
    insurance_no: str = "N-100",
    available_at: datetime = INSURANCE_AVAILABLE,
    deleted_at: datetime | None = None,
) -> InsuranceCertificate:
    return InsuranceCertificate(
        f"I-{insurer_id}-{insurance_no}",
        insurer_id,
        insurance_no,
        "CHASSIS-1",
        available_at,
        deleted_at,
    )


def completion_cert(
    id: str = "K-1",
    issued_on: date = date(2026, 1, 15),
    available_at: datetime = COMPLETION_AVAILABLE,
    used_by: str | None = None,
    deleted_at: datetime | None = None,
) -> CompletionCertificate:
    return CompletionCertificate(id, "CHASSIS-2", issued_on, available_at, used_by, deleted_at)


@pytest.mark.parametrize(
    ("as_of", "valid"),
    [
        (jst(2026, 11, 1, 12, 0), True),  # day 1, once available
        (jst(2026, 11, 15, 23, 59, 59), True),  # day 15
        (jst(2026, 11, 16, 0, 0), False),  # day 16
        (datetime(2026, 11, 15, 14, 59, 59, tzinfo=UTC), True),  # 11-15 23:59:59 JST
        (datetime(2026, 11, 15, 15, 0, tzinfo=UTC), False),  # 11-16 00:00 JST
    ],
)
def test_r2_valid_safety_window(settings: Settings, as_of: datetime, valid: bool) -> None:
    cert = safety_cert()
    got = valid_safety([cert], "OSS-C-1", as_of, settings)
    assert (got == cert) is valid
    assert (got is None) is not valid


def test_r2_valid_safety_not_before_inspection(settings: Settings) -> None:
    cert = safety_cert(inspected_on=date(2026, 11, 20), available_at=jst(2026, 11, 1))
    assert valid_safety([cert], "OSS-C-1", jst(2026, 11, 19, 10, 0), settings) is None


def test_r2_valid_safety_prefers_newest(settings: Settings) -> None:
    old = safety_cert("S-old", inspected_on=date(2026, 11, 1), insurance_no="N-1")
    new = safety_cert(
        "S-new", inspected_on=date(2026, 11, 10), insurance_no="N-2", available_at=jst(2026, 11, 10)
    )
    assert valid_safety([old, new], "OSS-C-1", jst(2026, 11, 12, 9, 0), settings) == new
    assert valid_safety([new, old], "OSS-C-1", jst(2026, 11, 12, 9, 0), settings) == new
    # 11-16: the old one has expired, the new one has not.
    assert valid_safety([old, new], "OSS-C-1", jst(2026, 11, 16, 9, 0), settings) == new


def test_r2_valid_completion_window(settings: Settings) -> None:
    cert = completion_cert()
    assert valid_completion([cert], "OSS-N-1", jst(2026, 10, 14, 23, 0), settings) == cert
    assert valid_completion([cert], "OSS-N-1", jst(2026, 10, 15, 0, 0), settings) is None
    assert valid_completion([cert], "OSS-N-2", jst(2026, 5, 1), settings) == cert
    used = completion_cert(used_by="OSS-OTHER")
    assert valid_completion([used], "OSS-N-1", jst(2026, 5, 1), settings) is None


# --- R2 is_usable -----------------------------------------------------------------------------


def test_r2_usable_only_once_in_kei_motas() -> None:
    cert = safety_cert(available_at=jst(2026, 11, 2, 9, 0))
    assert not is_usable(cert, "OSS-C-1", jst(2026, 11, 2, 8, 59, 59))
    assert is_usable(cert, "OSS-C-1", jst(2026, 11, 2, 9, 0))
    assert is_usable(cert, "OSS-C-1", jst(2026, 11, 2, 9, 10))


def test_r2_deleted_is_not_usable() -> None:
    cert = safety_cert(deleted_at=jst(2026, 11, 3, 10, 0))
    assert is_usable(cert, "OSS-C-1", jst(2026, 11, 3, 9, 59, 59))
    assert not is_usable(cert, "OSS-C-1", jst(2026, 11, 3, 10, 0))  # deleted_at <= as_of
    assert not is_usable(cert, "OSS-C-1", jst(2026, 11, 4))
    ins = insurance_cert(deleted_at=jst(2026, 11, 3, 10, 0))
    assert not is_usable(ins, "OSS-C-1", jst(2026, 11, 3, 10, 0))


def test_r2_used_by_another_application_is_not_usable() -> None:
    cert = safety_cert(used_by="OSS-OTHER")
    assert not is_usable(cert, "OSS-C-1", jst(2026, 11, 5))
    completion = completion_cert(used_by="OSS-OTHER")
    assert not is_usable(completion, "OSS-N-1", jst(2026, 5, 1))


def test_r2_used_by_the_same_application_is_usable() -> None:
    assert is_usable(safety_cert(used_by="OSS-C-1"), "OSS-C-1", jst(2026, 11, 5))
    assert is_usable(completion_cert(used_by="OSS-N-1"), "OSS-N-1", jst(2026, 5, 1))


def test_r2_insurance_has_no_owner() -> None:
    assert is_usable(insurance_cert(), "OSS-C-1", jst(2026, 11, 5))
    assert is_usable(insurance_cert(), "OSS-ANY", jst(2026, 11, 5))


# --- judge_presence (R1, R2) ------------------------------------------------------------------

AS_OF = jst(2026, 11, 5, 9, 0)
BOTH_CONT = kinds(SAFETY, INSURANCE)


def test_continuous_both_present(settings: Settings) -> None:
    certs = CertificateSet(safety=(safety_cert(),), insurance=(insurance_cert(),))
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, certs, settings) == BOTH_CONT


def test_continuous_insurance_uses_key_on_safety_certificate(settings: Settings) -> None:
    # Insurance exists, but not under the (insurer id, number) written on the 保適証.
    certs = CertificateSet(
        safety=(safety_cert(insurer_id="INS-1", insurance_no="N-100"),),
        insurance=(insurance_cert("INS-1", "N-101"), insurance_cert("INS-2", "N-100")),
    )
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, certs, settings) == kinds(SAFETY)


def test_continuous_no_safety_means_insurance_missing(settings: Settings) -> None:
    certs = CertificateSet(insurance=(insurance_cert(),))
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, certs, settings) == kinds()
    assert judge_presence(CONTINUOUS_APP, kinds(INSURANCE), AS_OF, certs, settings) == kinds()


def test_continuous_invalid_safety_means_insurance_missing(settings: Settings) -> None:
    # Only an expired (inspected 10-01) and a not-yet-copied 保適証: neither counts.
    expired = safety_cert("S-exp", inspected_on=date(2026, 10, 1), available_at=jst(2026, 10, 1))
    late = safety_cert("S-late", available_at=jst(2026, 11, 5, 9, 5))
    certs = CertificateSet(safety=(expired, late), insurance=(insurance_cert(),))
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, certs, settings) == kinds()
    # Five minutes later the linkage has copied the new one: both present.
    later = jst(2026, 11, 5, 9, 10)
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, later, certs, settings) == BOTH_CONT


def test_continuous_insurance_key_from_the_chosen_safety(settings: Settings) -> None:
    # The newer 保適証 is consumed by another application: the older valid one's key counts.
    older = safety_cert("S-a", inspected_on=date(2026, 11, 1), insurance_no="N-A")
    newer = safety_cert(
        "S-b",
        inspected_on=date(2026, 11, 3),
        insurance_no="N-B",
        available_at=jst(2026, 11, 3),
        used_by="OSS-OTHER",
    )
    only_b = CertificateSet(safety=(older, newer), insurance=(insurance_cert("INS-1", "N-B"),))
    only_a = CertificateSet(safety=(older, newer), insurance=(insurance_cert("INS-1", "N-A"),))
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, only_b, settings) == kinds(SAFETY)
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, only_a, settings) == BOTH_CONT


def test_continuous_only_asked_kinds_are_reported(settings: Settings) -> None:
    certs = CertificateSet(safety=(safety_cert(),), insurance=(insurance_cert(),))
    # Safety confirmed earlier: only insurance is asked, still looked up via the 保適証.
    assert judge_presence(CONTINUOUS_APP, kinds(INSURANCE), AS_OF, certs, settings) == kinds(
        INSURANCE
    )
    assert judge_presence(CONTINUOUS_APP, kinds(SAFETY), AS_OF, certs, settings) == kinds(SAFETY)


def test_insurance_deleted_or_not_yet_copied_is_missing(settings: Settings) -> None:
    deleted = CertificateSet(
        safety=(safety_cert(),), insurance=(insurance_cert(deleted_at=jst(2026, 11, 4)),)
    )
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, deleted, settings) == kinds(SAFETY)
    pending = CertificateSet(
        safety=(safety_cert(),), insurance=(insurance_cert(available_at=jst(2026, 11, 5, 9, 1)),)
    )
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, pending, settings) == kinds(SAFETY)


BOTH_NEW = kinds(COMPLETION, INSURANCE)
NEW_AS_OF = jst(2026, 5, 1, 9, 0)


def test_new_both_present_key_from_application(settings: Settings) -> None:
    certs = CertificateSet(
        completion=(completion_cert(),), insurance=(insurance_cert("INS-9", "N-900"),)
    )
    assert judge_presence(NEW_APP, BOTH_NEW, NEW_AS_OF, certs, settings) == BOTH_NEW


def test_new_insurance_with_other_key_is_missing(settings: Settings) -> None:
    certs = CertificateSet(
        completion=(completion_cert(),),
        # The key of some 保適証 does not matter for a new inspection.
        safety=(safety_cert(insurer_id="INS-1", insurance_no="N-100"),),
        insurance=(insurance_cert("INS-1", "N-100"), insurance_cert("INS-9", "N-901")),
    )
    assert judge_presence(NEW_APP, BOTH_NEW, NEW_AS_OF, certs, settings) == kinds(COMPLETION)


def test_new_without_insurance_key_is_missing(settings: Settings) -> None:
    app = replace(NEW_APP, insurer_id=None, insurance_no=None)
    certs = CertificateSet(
        completion=(completion_cert(),), insurance=(insurance_cert("INS-9", "N-900"),)
    )
    assert judge_presence(app, BOTH_NEW, NEW_AS_OF, certs, settings) == kinds(COMPLETION)


def test_new_completion_used_or_expired_is_missing(settings: Settings) -> None:
    ins = (insurance_cert("INS-9", "N-900"),)
    used = CertificateSet(completion=(completion_cert(used_by="OSS-OTHER"),), insurance=ins)
    assert judge_presence(NEW_APP, BOTH_NEW, NEW_AS_OF, used, settings) == kinds(INSURANCE)
    mine = CertificateSet(completion=(completion_cert(used_by="OSS-N-1"),), insurance=ins)
    assert judge_presence(NEW_APP, BOTH_NEW, NEW_AS_OF, mine, settings) == BOTH_NEW
    fresh = CertificateSet(completion=(completion_cert(),), insurance=ins)
    expired_on = jst(2026, 10, 15, 9, 0)  # issued 01-15, valid through 10-14
    assert judge_presence(NEW_APP, BOTH_NEW, expired_on, fresh, settings) == kinds(INSURANCE)


def test_nothing_in_kei_motas(settings: Settings) -> None:
    empty = CertificateSet()
    assert judge_presence(CONTINUOUS_APP, BOTH_CONT, AS_OF, empty, settings) == kinds()
    assert judge_presence(NEW_APP, BOTH_NEW, NEW_AS_OF, empty, settings) == kinds()
