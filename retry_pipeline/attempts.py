"""What one attempt decides (R3, R8), as pure functions over a chain and a registry answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.model import CertificateKind, Chain, Cursor, Outcome, Procedure, sorted_kinds
from retry_pipeline.policy import advance_chain


def kinds_to_check(chain: Chain) -> frozenset[CertificateKind]:
    """R3/R8: the whole set the pre-review needs, checked again at every attempt.

    The still-missing certificates, the ones found by earlier attempts and the
    report's ``confirmed`` ones (a confirmed or found one missing now is R3). For
    continuous inspection the insurance certificate is looked up through the
    safety certificate (R1.2), so it is checked whenever the safety one is.
    """
    kinds = chain.missing | chain.found | chain.confirmed
    if chain.subject.procedure is Procedure.CONTINUOUS and CertificateKind.SAFETY in kinds:
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
    """R3 first (found present before, missing now), then R8 (all present: resume).

    ``present`` answers for ``kinds_to_check(chain)``. When the safety certificate
    of a continuous inspection is absent, the insurance certificate cannot be
    looked up by the key written on it: it is unknown, not missing, so R3 names
    the safety certificate alone.
    """
    checked = kinds_to_check(chain)
    absent = checked - present
    unknown: frozenset[CertificateKind] = frozenset()
    if chain.subject.procedure is Procedure.CONTINUOUS and CertificateKind.SAFETY in absent:
        unknown = frozenset({CertificateKind.INSURANCE})
    lost = (absent - unknown) & (chain.found | chain.confirmed)
    if lost:
        return Verdict(
            Outcome.AUTO_CORRECTED,
            lost,
            checked & present,
            f"R3: {', '.join(sorted_kinds(lost))} found present earlier, missing now",
        )
    still = absent
    if unknown and CertificateKind.INSURANCE not in chain.missing:
        still -= unknown  # not reported missing: its key is on the missing safety certificate
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
