"""What a report does (R1, R3, R4), as a pure function of what SQL knows of its application.

Intake reads what is known (the live chain, the last decision), decides here, and
writes; attempts do the same with ``attempts.decide_attempt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.model import CertificateKind, Chain, Cursor, Report, sorted_kinds
from retry_pipeline.policy import start_chain
from retry_pipeline.rules import Admission


class Action(StrEnum):
    """What becomes of a report."""

    START = "start"  # R4: the application's first record; a chain starts
    MERGE = "merge"  # R4: added to the live record; the chain goes on (R16)
    END = "end"  # R3: a certificate seen present is missing now: the live chain ends
    DUPLICATE = "duplicate"  # taken before, or detected before the application's last decision
    AUTO_CORRECT = "auto_correct"  # R1/R3: auto-corrected at once, no chain


@dataclass(frozen=True)
class Known:
    """What the record of truth holds about an application when its report arrives."""

    live: Chain | None = None
    last_decision: tuple[str, datetime] | None = None  # (chain id, decided at)
    received: frozenset[datetime] = frozenset()  # detected_at of its reports already taken


@dataclass(frozen=True)
class ReportDecision:
    """The decision about one report."""

    action: Action
    reason: str
    cursor: Cursor | None = None  # START: the first attempt
    lost: frozenset[CertificateKind] = frozenset()  # END: what vanished (R3)


def decide_report(
    report: Report,
    admission: Admission,
    known: Known,
    calendar: BusinessCalendar,
    close_signals: Sequence[datetime],
) -> ReportDecision:
    """R1, R3, R4: start a chain, merge into the live one, end it, or auto-correct at once."""
    chain = known.live
    if chain is not None:
        if report.detected_at in known.received:
            # DESIGN 11: the sender re-sent a report it had no receipt for; the chain goes on.
            return ReportDecision(Action.DUPLICATE, "duplicate report: already received")
        # R3: a certificate seen present (by pre-review or an attempt) and missing now.
        lost = report.missing & (chain.found | chain.confirmed | report.confirmed)
        if lost:
            reason = f"R3: {', '.join(sorted_kinds(lost))} found present earlier, missing now"
            return ReportDecision(Action.END, reason, lost=lost)
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
    if not admission.retry:
        return ReportDecision(Action.AUTO_CORRECT, admission.reason)
    cursor = start_chain(report.detected_at, calendar, close_signals)
    return ReportDecision(Action.START, admission.reason, cursor=cursor)
