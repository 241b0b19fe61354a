"""What a report does (R1, R3, R4, R4a), as a pure function of what SQL knows of its application.

Intake reads what is known (the live chain, the last decision, what was found present
before), decides here, and writes; attempts do the same with ``attempts.decide_attempt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.model import Application, CertificateKind, Chain, Cursor, Report, sorted_kinds
from retry_pipeline.policy import start_chain
from retry_pipeline.rules import TARGETS, Admission

# R4: a report whose subject differs from the live record's in one of these is refused.
IDENTITY = ("office", "procedure", "vehicle", "insurer_id", "insurance_no")


class Action(StrEnum):
    """What becomes of a report."""

    START = "start"  # R4: the application's first record; a chain starts
    MERGE = "merge"  # R4: added to the live record; the chain goes on (R16)
    END = "end"  # R3: a certificate seen present is missing now: the live chain ends
    DUPLICATE = "duplicate"  # taken before, or detected before the application's last decision
    AUTO_CORRECT = "auto_correct"  # R1/R3: auto-corrected at once, no chain
    REFUSE = "refuse"  # R4: contradicts the live record; R4a: stale (a dead letter)


@dataclass(frozen=True)
class Known:
    """What the record of truth holds about an application when its report arrives."""

    live: Chain | None = None
    last_decision: tuple[str, datetime] | None = None  # (chain id, decided at)
    # R3: found present for the application before: by an attempt of any of its chains,
    # or by an earlier report's ``confirmed``.
    found_before: frozenset[CertificateKind] = frozenset()
    received: frozenset[datetime] = frozenset()  # detected_at of its reports already taken


@dataclass(frozen=True)
class ReportDecision:
    """The decision about one report."""

    action: Action
    reason: str
    cursor: Cursor | None = None  # START: the first attempt
    lost: frozenset[CertificateKind] = frozenset()  # END, AUTO_CORRECT by R3: what vanished
    carried: frozenset[CertificateKind] = frozenset()  # START: found before, checked again (R3)
    late_s: int | None = None  # START: R4a, planned from its arrival this long after detection


def decide_report(
    report: Report,
    admission: Admission,
    known: Known,
    calendar: BusinessCalendar,
    close_signals: Sequence[datetime],
    *,
    arrived_at: datetime | None = None,
) -> ReportDecision:
    """R1, R3, R4, R4a: start a chain, merge, end the live one, auto-correct at once, or refuse.

    ``arrived_at``: when the report reached the pipeline (None: on time, R4a not checked).
    """
    stale = _stale_reason(report, calendar, arrived_at)
    chain = known.live
    if chain is not None:
        differ = conflicting(chain.subject, report.subject)
        if differ:
            return ReportDecision(
                Action.REFUSE,
                f"conflicting report (R4): {report.subject.application} has a live chain with "
                f"{'; '.join(differ)}; refused, the live chain is unchanged",
            )
        if report.detected_at in known.received:
            # DESIGN 11: the sender re-sent a report it had no receipt for; the chain goes on.
            return ReportDecision(Action.DUPLICATE, "duplicate report: already received")
        if _repeats(report, chain):  # the chain's own report again (a redelivery)
            return ReportDecision(Action.MERGE, "R4: merged")
        if stale:
            return ReportDecision(Action.REFUSE, stale)
        # R3: a certificate seen present (by pre-review or an attempt) and missing now.
        lost = report.missing & (
            known.found_before | chain.found | chain.confirmed | report.confirmed
        )
        if lost:
            return ReportDecision(Action.END, _r3(lost), lost=lost)
        return ReportDecision(Action.MERGE, "R4: merged")  # R16: never restarted
    decided = known.last_decision
    if decided is not None and report.detected_at <= decided[1]:
        # A redelivered or repeated report: a new detection comes after pre-review
        # resumed, i.e. after that decision.
        return ReportDecision(
            Action.DUPLICATE, f"duplicate report: already decided at {format_instant(decided[1])}"
        )
    if report.detected_at in known.received:
        return ReportDecision(Action.DUPLICATE, "duplicate report: already received")
    if stale:
        return ReportDecision(Action.REFUSE, stale)
    if not admission.retry:
        return ReportDecision(Action.AUTO_CORRECT, admission.reason)
    lost = report.missing & known.found_before
    if lost:  # R3 across reports: found present before, for this application
        return ReportDecision(Action.AUTO_CORRECT, _r3(lost), lost=lost)
    carried = (known.found_before & TARGETS[report.subject.procedure]) - report.missing
    cursor = start_chain(report.detected_at, calendar, close_signals)
    step = timedelta(minutes=calendar.settings.step_min)
    if arrived_at is not None and arrived_at - cursor.slot > step:
        # R4a: never decided on slots that passed before it arrived.
        cursor = start_chain(arrived_at, calendar, close_signals)
        late_s = int((arrived_at - report.detected_at).total_seconds())
        reason = (
            f"{admission.reason}; R4a: reached the pipeline {duration(late_s)} after its "
            f"detection, planned from its arrival {format_instant(arrived_at)}"
        )
        return ReportDecision(Action.START, reason, cursor=cursor, carried=carried, late_s=late_s)
    return ReportDecision(Action.START, admission.reason, cursor=cursor, carried=carried)


def conflicting(live: Application, report: Application) -> list[str]:
    """R4: how a report's subject differs from the live record's (empty: the same)."""
    out = []
    for name in IDENTITY:
        was, now = getattr(live, name), getattr(report, name)
        if was != now:
            out.append(f"{name} {_text(was)} (this report: {_text(now)})")
    return out


def _text(value: object) -> str:
    return "none" if value is None else str(value)


def _r3(lost: frozenset[CertificateKind]) -> str:
    return f"R3: {', '.join(sorted_kinds(lost))} found present earlier, missing now"


def _repeats(report: Report, chain: Chain) -> bool:
    """A report detected no later than the live chain's, naming nothing it does not hold:
    the chain's own report delivered again. It never ends the chain by R3, even when an
    attempt has found one of its certificates since."""
    held = chain.missing | chain.found
    return (
        report.detected_at <= chain.detected_at
        and report.missing <= held
        and report.confirmed <= chain.confirmed | chain.found
    )


def _stale_reason(
    report: Report, calendar: BusinessCalendar, arrived_at: datetime | None
) -> str | None:
    limit = calendar.settings.stale_after_s
    if arrived_at is None or (arrived_at - report.detected_at).total_seconds() <= limit:
        return None
    return (
        f"stale report (R4a): detected at {format_instant(report.detected_at)}, more than "
        f"{duration(limit)} before it reached the pipeline; the examination side must check again"
    )


def duration(seconds: int) -> str:
    """``90061`` → ``1 d 1 h 1 min 1 s``; zero parts are left out."""
    parts = []
    rest = max(seconds, 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {unit}")
    return " ".join(parts) or "0 s"
