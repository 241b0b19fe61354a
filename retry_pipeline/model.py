"""Domain vocabulary (SPEC.md "Vocabulary"): procedures, certificates, reports, outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from retry_pipeline.policy import Cursor


class Procedure(StrEnum):
    """The inspection procedure of an application."""

    CONTINUOUS = "continuous"  # 継続検査
    NEW = "new"  # 新規検査


class CertificateKind(StrEnum):
    """The electronic certificates the pre-review (前審査) checks."""

    SAFETY = "safety"  # 保適証 (保安基準適合証)
    INSURANCE = "insurance"  # 自賠責証
    COMPLETION = "completion"  # 完検証 (完成検査終了証)


class Outcome(StrEnum):
    """How a chain ends (R8, R11, R3)."""

    RESUMED = "resumed"  # back to pre-review, which runs again from the start
    AUTO_CORRECTED = "auto_corrected"  # 自動補正, reason "attachment missing" (添付書類なし)


PORTAL_STATUS_UNDER_REVIEW = "検査申請審査中"  # R14: what the applicant sees while a chain is live


@dataclass(frozen=True)
class Application:
    """The parts of an OSS application (ＯＳＳ申請) the existence check needs."""

    application: str
    office: str  # 事務所 code; R15: only this office sees the chain
    procedure: Procedure
    vehicle: str  # chassis number
    insurer_id: str | None = None  # new inspection: given with the application
    insurance_no: str | None = None


@dataclass(frozen=True)
class Report:
    """A missing-certificate event from the pre-review."""

    subject: Application
    missing: frozenset[CertificateKind]
    confirmed: frozenset[CertificateKind]  # found present by an earlier check (R3)
    detected_at: datetime


def sorted_kinds(kinds: frozenset[CertificateKind] | set[CertificateKind]) -> list[str]:
    """Kinds in a stable order for storage and messages."""
    order = list(CertificateKind)
    return [k.value for k in sorted(kinds, key=order.index)]


@dataclass(frozen=True)
class SafetyCertificate:
    """保適証 as it sits in Kei-MOTAS; ``available_at`` is when the linkage copied it there."""

    id: str
    vehicle: str
    inspected_on: date
    insurer_id: str
    insurance_no: str
    available_at: datetime
    used_by: str | None = None  # application that consumed it
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class InsuranceCertificate:
    """自賠責証; keyed by (insurer id, certificate number)."""

    id: str
    insurer_id: str
    insurance_no: str
    vehicle: str
    available_at: datetime
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class CompletionCertificate:
    """完検証; keyed by chassis number."""

    id: str
    vehicle: str
    issued_on: date
    available_at: datetime
    used_by: str | None = None
    deleted_at: datetime | None = None


Certificate = SafetyCertificate | InsuranceCertificate | CompletionCertificate


@dataclass(frozen=True)
class Chain:
    """A live record of the retry table, as the core sees it (R4, R5)."""

    chain_id: str
    subject: Application
    missing: frozenset[CertificateKind]
    found: frozenset[CertificateKind]
    confirmed: frozenset[CertificateKind]
    detected_at: datetime
    attempts_made: int
    cursor: Cursor
    version: int
    dispatched_for: datetime | None = None  # slot whose attempt message was last sent

    @property
    def next_attempt_no(self) -> int:
        """The number the next attempt of this chain carries (1-based)."""
        return self.attempts_made + 1


@dataclass(frozen=True)
class HistoryEntry:
    """One line of the append-only history (R5)."""

    chain_id: str
    application: str
    event: str
    attempt_no: int | None
    slot: datetime | None
    missing: tuple[str, ...]
    detail: str
    recorded_at: datetime
