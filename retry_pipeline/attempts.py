"""What one attempt decides (R3, R8), as pure functions over a chain and a registry answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.model import CertificateKind, Chain, Cursor, Outcome, Procedure, sorted_kinds
from retry_pipeline.policy import advance_chain


def kinds_to_check(chain: Chain) -> frozenset[CertificateKind]:
    """Still missing, found at earlier attempts (R3), and the insurance a safety certificate names.

    For continuous inspection the insurance certificate is looked up through the
    safety certificate (R1.2), so the pre-review could not check it while the
    safety certificate was missing: check it too, unless it was confirmed.
    """
    kinds = chain.missing | chain.found
    if (
        chain.subject.procedure is Procedure.CONTINUOUS
        and CertificateKind.SAFETY in kinds
        and CertificateKind.INSURANCE not in chain.confirmed
    ):
        kinds |= {CertificateKind.INSURANCE}
    return kinds


@dataclass(frozen=True)
class Verdict:
    """An attempt's finding: an ending, or still missing (keep retrying)."""

    outcome: Outcome | None
    missing: frozenset[CertificateKind]
    found: frozenset[CertificateKind]
    reason: str


def judge_attempt(chain: Chain, present: frozenset[CertificateKind]) -> Verdict:
    """R3 first (found earlier, missing now), then R8 (all present: resume)."""
    checked = kinds_to_check(chain)
    lost = chain.found - present
    if lost:
        return Verdict(
            Outcome.AUTO_CORRECTED,
            lost,
            chain.found & present,
            f"R3: {', '.join(sorted_kinds(lost))} found at an earlier attempt, missing now",
        )
    still = checked - present
    if CertificateKind.SAFETY in still and CertificateKind.INSURANCE not in chain.missing:
        # Its key is on the missing safety certificate: unknown, not missing.
        still -= {CertificateKind.INSURANCE}
    if not still:
        return Verdict(Outcome.RESUMED, frozenset(), checked, "R8: every certificate present")
    return Verdict(None, still, checked & present, "still missing")


@dataclass(frozen=True)
class Decision:
    """What an attempt does to its chain: go on to ``next_cursor``, or end with ``outcome``."""

    next_cursor: Cursor | None
    outcome: Outcome | None
    missing: frozenset[CertificateKind]
    found: frozenset[CertificateKind]
    reason: str


def decide_attempt(
    chain: Chain,
    present: frozenset[CertificateKind],
    calendar: BusinessCalendar,
    close_signals: Sequence[datetime],
) -> Decision:
    """R3, R8, R10, R11: the attempt at ``chain.cursor.slot`` given what is present."""
    verdict = judge_attempt(chain, present)
    if verdict.outcome is not None:
        return Decision(None, verdict.outcome, verdict.missing, verdict.found, verdict.reason)
    nxt = advance_chain(chain.cursor, calendar, close_signals)
    if nxt is None:
        reason = "R11: last attempt" if chain.cursor.parked else "R8: last attempt"
        return Decision(None, Outcome.AUTO_CORRECTED, verdict.missing, verdict.found, reason)
    return Decision(nxt, None, verdict.missing, verdict.found, verdict.reason)
