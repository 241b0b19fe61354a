"""What one attempt decides (R3, R8), as pure functions over a chain and a registry answer."""

from __future__ import annotations

from dataclasses import dataclass

from retry_pipeline.model import CertificateKind, Chain, Outcome, Procedure, sorted_kinds


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
