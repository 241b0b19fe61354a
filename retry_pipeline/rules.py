"""Certificate rules R1–R3 as pure functions."""

from __future__ import annotations

import calendar as calendar_module
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from retry_pipeline.calendar import to_local
from retry_pipeline.config import Settings
from retry_pipeline.errors import NotARetryTarget
from retry_pipeline.model import (
    Application,
    CertificateKind,
    CompletionCertificate,
    InsuranceCertificate,
    Procedure,
    Report,
    SafetyCertificate,
)

# R1: the only (procedure, certificate) pairs this system retries.
TARGETS: dict[Procedure, frozenset[CertificateKind]] = {
    Procedure.CONTINUOUS: frozenset({CertificateKind.SAFETY, CertificateKind.INSURANCE}),
    Procedure.NEW: frozenset({CertificateKind.COMPLETION, CertificateKind.INSURANCE}),
}


@dataclass(frozen=True)
class Admission:
    """What to do with a report: retry, or auto-correct at once and why."""

    retry: bool
    reason: str


def check_targets(procedure: Procedure, kinds: frozenset[CertificateKind]) -> None:
    """R1: refuse a pair that is not a retry target (not this system's concern)."""
    foreign = kinds - TARGETS[procedure]
    if foreign:
        names = ", ".join(sorted(k.value for k in foreign))
        raise NotARetryTarget(
            f"{procedure.value} inspection does not retry {names}; "
            f"retried certificates are {', '.join(sorted(k.value for k in TARGETS[procedure]))}"
        )


def admit_report(report: Report, settings: Settings) -> Admission:
    """R1/R3: retry the report, or auto-correct it at once as today."""
    procedure = report.subject.procedure
    check_targets(procedure, report.missing | report.confirmed)
    if procedure is Procedure.NEW:
        start = settings.new_inspection_retry_from
        detected_on = to_local(report.detected_at).date()
        if start is None or detected_on < start:
            return Admission(False, "R1: new-inspection retry not in force on the detection date")
    reappeared = report.missing & report.confirmed
    if reappeared:
        names = ", ".join(sorted(k.value for k in reappeared))
        return Admission(False, f"R3: {names} found present earlier and missing now")
    return Admission(True, "R1: retry target")


def safety_valid_through(inspected_on: date, settings: Settings) -> date:
    """R2: last day a safety certificate is valid (inspection date is day 1)."""
    return inspected_on + timedelta(days=settings.safety_validity_days - 1)


def completion_valid_through(issued_on: date, settings: Settings) -> date:
    """R2: last day a completion certificate is valid.

    D: counted like the safety certificate (issue date as day 1) and like the Civil
    Code's months (art. 143): it ends the day before the same date N months later,
    or on the last day of that month when it has no such date. 9 months from
    2026-01-15 runs through 2026-10-14; from 2026-05-31 through 2027-02-28.
    """
    months = issued_on.month - 1 + settings.completion_validity_months
    year, month = issued_on.year + months // 12, months % 12 + 1
    last_of_month = calendar_module.monthrange(year, month)[1]
    if issued_on.day > last_of_month:
        return date(year, month, last_of_month)
    return date(year, month, issued_on.day) - timedelta(days=1)


def is_usable(
    cert: SafetyCertificate | InsuranceCertificate | CompletionCertificate,
    application: str,
    as_of: datetime,
) -> bool:
    """R2: in Kei-MOTAS at ``as_of``, not deleted, not consumed by another application."""
    if cert.available_at > as_of:
        return False
    if cert.deleted_at is not None and cert.deleted_at <= as_of:
        return False
    used_by = getattr(cert, "used_by", None)
    return used_by is None or used_by == application


def valid_safety(
    certs: Iterable[SafetyCertificate], application: str, as_of: datetime, settings: Settings
) -> SafetyCertificate | None:
    """R2: the newest unused safety certificate within its validity at ``as_of``, if any."""
    today = to_local(as_of).date()
    ok = [
        c
        for c in certs
        if is_usable(c, application, as_of)
        and c.inspected_on <= today <= safety_valid_through(c.inspected_on, settings)
    ]
    return max(ok, key=lambda c: (c.inspected_on, c.available_at, c.id), default=None)


def valid_completion(
    certs: Iterable[CompletionCertificate], application: str, as_of: datetime, settings: Settings
) -> CompletionCertificate | None:
    """R2: an unused completion certificate within its validity at ``as_of``, if any."""
    today = to_local(as_of).date()
    ok = [
        c
        for c in certs
        if is_usable(c, application, as_of)
        and c.issued_on <= today <= completion_valid_through(c.issued_on, settings)
    ]
    return max(ok, key=lambda c: (c.issued_on, c.available_at, c.id), default=None)


def insurance_key(subject: Application, safety: SafetyCertificate | None) -> tuple[str, str] | None:
    """R1: continuous inspection: the key on the safety certificate; new: the application."""
    if subject.procedure is Procedure.CONTINUOUS:
        return None if safety is None else (safety.insurer_id, safety.insurance_no)
    if subject.insurer_id and subject.insurance_no:
        return (subject.insurer_id, subject.insurance_no)
    return None


def judge_presence(
    subject: Application,
    kinds: frozenset[CertificateKind],
    as_of: datetime,
    certificates: CertificateSet,
    settings: Settings,
) -> frozenset[CertificateKind]:
    """R1/R2: which of ``kinds`` are present in Kei-MOTAS as of ``as_of``."""
    app = subject.application
    safety = valid_safety(certificates.safety, app, as_of, settings)
    present: set[CertificateKind] = set()
    if CertificateKind.SAFETY in kinds and safety is not None:
        present.add(CertificateKind.SAFETY)
    if CertificateKind.COMPLETION in kinds and (
        valid_completion(certificates.completion, app, as_of, settings) is not None
    ):
        present.add(CertificateKind.COMPLETION)
    key = insurance_key(subject, safety)
    if (
        CertificateKind.INSURANCE in kinds
        and key is not None
        and any(
            (c.insurer_id, c.insurance_no) == key and is_usable(c, app, as_of)
            for c in certificates.insurance
        )
    ):
        present.add(CertificateKind.INSURANCE)
    return frozenset(present)


@dataclass(frozen=True)
class CertificateSet:
    """The Kei-MOTAS rows that could matter for one application."""

    safety: tuple[SafetyCertificate, ...] = ()
    insurance: tuple[InsuranceCertificate, ...] = ()
    completion: tuple[CompletionCertificate, ...] = ()
