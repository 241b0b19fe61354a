"""Domain vocabulary (SPEC.md "Vocabulary"): procedures, certificates, reports, outcomes."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import pendulum


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


class Event(StrEnum):
    """What a line of the append-only history records (R5)."""

    REPORTED = "reported"
    MERGED = "merged"
    ATTEMPT = "attempt"
    PARKED = "parked"
    RESUMED = "resumed"
    AUTO_CORRECTED = "auto_corrected"
    DUPLICATE = "duplicate"  # a report that came again after its chain was decided

    @classmethod
    def ending(cls, outcome: Outcome) -> Event:
        """The history event of a chain's ending."""
        return cls.RESUMED if outcome is Outcome.RESUMED else cls.AUTO_CORRECTED


class Phase(StrEnum):
    """Which budget a chain is spending."""

    FRESH = "fresh"  # R13: detected off-hours, waits for an opening with the full budget
    SAME_DAY = "same_day"  # R7: up to 6 attempts on the grid of one day
    NEXT_DAY = "next_day"  # R11: parked; one attempt at 08:30 of the next business day


@dataclass(frozen=True)
class Cursor:
    """The next attempt of a chain: its slot, and how much of the phase's budget is used."""

    phase: Phase
    used: int  # attempts already made in this phase
    slot: pendulum.DateTime

    @property
    def parked(self) -> bool:
        """R10/R12: waiting for a later day's opening after a close."""
        return self.phase is Phase.NEXT_DAY


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
    """Kinds in a stable order for storage and messages (a new list each call); a value
    equal to no kind (a kind's own string is equal to it) raises ValueError."""
    return list(_in_order(frozenset(kinds)))


@functools.cache  # at most eight sets of three kinds; a slot asks for them thousands of times
def _in_order(kinds: frozenset[CertificateKind]) -> tuple[str, ...]:
    ordered = tuple(k.value for k in CertificateKind if k in kinds)
    if len(ordered) != len(kinds):
        raise ValueError(f"not certificate kinds: {sorted(map(str, kinds))}")
    return ordered


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

    @classmethod
    def from_report(
        cls, chain_id: str, report: Report, cursor: Cursor, dispatched_for: datetime | None = None
    ) -> Chain:
        """The record a first report starts (R4): nothing tried yet."""
        return cls(
            chain_id=chain_id,
            subject=report.subject,
            missing=report.missing,
            found=frozenset(),
            confirmed=report.confirmed,
            detected_at=report.detected_at,
            attempts_made=0,
            cursor=cursor,
            version=1,
            dispatched_for=dispatched_for,
        )

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
    office: str = ""
    found: tuple[str, ...] = ()  # R3: what this event saw present (attempt, report's confirmed)
    late_s: int | None = None  # R4a: a report planned from its arrival, this late (seconds)


def history_line(
    chain_id: str,
    subject: Application,
    event: Event,
    attempt_no: int | None,
    slot: datetime | None,
    missing: frozenset[CertificateKind],
    detail: str,
    now: datetime,
    *,
    found: frozenset[CertificateKind] = frozenset(),
    late_s: int | None = None,
) -> HistoryEntry:
    """A history line about ``subject`` (the detail is capped at 500 characters)."""
    return HistoryEntry(
        chain_id=chain_id,
        application=subject.application,
        event=event.value,
        attempt_no=attempt_no,
        slot=slot,
        missing=tuple(sorted_kinds(missing)),
        detail=detail[:500],
        recorded_at=now,
        office=subject.office,
        found=tuple(sorted_kinds(found)),
        late_s=late_s,
    )


@dataclass(frozen=True)
class Ending:
    """How a chain ends (R3, R8, R11): the outcome, what is missing, when it was decided.

    ``live``: the chain has a record to delete (False for a report decided at once).
    ``attempt_no``: the deciding attempt (None: decided by a report).
    ``found``: what the deciding check saw present (R3: kept in the history).
    """

    chain_id: str
    subject: Application
    outcome: Outcome
    missing: frozenset[CertificateKind]
    decided_at: datetime
    reason: str
    attempt_no: int | None = None
    live: bool = True
    found: frozenset[CertificateKind] = frozenset()


@dataclass(frozen=True)
class PendingOutcome:
    """An outbox row the relay has to deliver (DESIGN 5)."""

    id: int
    chain_id: str
    idempotency_key: str
    application: str
    office: str
    outcome: Outcome
    missing: tuple[str, ...]
    decided_at: datetime
    send_count: int


def idempotency_key(chain_id: str, outcome: Outcome) -> str:
    """The key every delivery of a chain's outcome carries (DESIGN 5)."""
    return f"{chain_id}:{outcome.value}"


class ReceiptStatus(StrEnum):
    """What became of a report, as its receipt tells the examination side (DESIGN 11)."""

    ACCEPTED = "accepted"  # R4: a chain started
    MERGED = "merged"  # R4: added to the live chain
    DUPLICATE = "duplicate"  # taken before (a re-send) or detected before the last decision
    AUTO_CORRECTED = "auto_corrected"  # R1, R3: decided at once by this report
    REFUSED = "refused"  # not a valid report; kept as a dead letter


@dataclass(frozen=True)
class Receipt:
    """The pipeline took a report: what became of it (DESIGN 11).

    ``detected_at`` is ISO 8601 text: Japan time for a report that was read, the
    message's own text for a refused one. ``chain_id`` is None for a refused report.
    """

    application: str
    office: str
    detected_at: str
    status: ReceiptStatus
    chain_id: str | None
    reason: str


@dataclass(frozen=True)
class PendingReceipt:
    """A receipt row the relay has to deliver."""

    id: int
    receipt: Receipt


@dataclass(frozen=True)
class Dispatch:
    """An attempt the grid tick found due: chain, attempt number, slot."""

    chain_id: str
    attempt_no: int
    slot: datetime


@dataclass(frozen=True)
class DeadLetter:
    """A refused message, kept with the reason, its headers and the first 64 KiB of its body.

    ``payload`` is that head as NUL-safe text; ``size`` and ``sha256`` are of the whole body.
    """

    id: int
    task: str
    reason: str
    payload: str
    received_at: datetime
    size: int = 0
    sha256: str = ""
    headers: str = ""  # JSON text, capped


LETTER_HEAD_BYTES = 65_536  # what a dead letter keeps of a body
LETTER_HEADERS_CHARS = 8_192  # and of its headers


@dataclass(frozen=True)
class LetterBody:
    """What a dead letter keeps of a body: its head, its size and its SHA-256."""

    head: bytes
    size: int
    sha256: str


def letter_body(raw: str | bytes) -> LetterBody:
    """The head (first 64 KiB), size and SHA-256 of a whole body (text as UTF-8)."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return LetterBody(data[:LETTER_HEAD_BYTES], len(data), hashlib.sha256(data).hexdigest())


def letter_text(head: bytes) -> str:
    """Bytes as text any database keeps: UTF-8 where valid, ``\\xNN`` escapes elsewhere."""
    text = head.decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00")


def letter_headers(headers: Mapping[str, Any] | None) -> str:
    """Message headers as capped, NUL-safe JSON text."""
    if not headers:
        return ""
    text = json.dumps(dict(headers), ensure_ascii=True, default=repr, sort_keys=True)
    return text[:LETTER_HEADERS_CHARS]
