"""R3 at every attempt (R8 re-checks R2, R3): ``kinds_to_check`` and ``decide_attempt``.

Two kinds of tables: one attempt with a given registry answer, and whole chains
walked through the pure core (``start_chain`` → ``kinds_to_check`` →
``judge_presence`` → ``decide_attempt``) as the service does, over literal
certificates and Japan-time datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pendulum
import pytest

from retry_pipeline.attempts import decide_attempt, kinds_to_check
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.config import Settings
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    CompletionCertificate,
    InsuranceCertificate,
    Outcome,
    Procedure,
    SafetyCertificate,
)
from retry_pipeline.policy import Cursor, Phase, start_chain
from retry_pipeline.rules import CertificateSet, judge_presence

JST = ZoneInfo("Asia/Tokyo")
SAFETY = CertificateKind.SAFETY
INSURANCE = CertificateKind.INSURANCE
COMPLETION = CertificateKind.COMPLETION
SETTINGS = Settings(new_inspection_retry_from=date(2026, 11, 1))
CALENDAR = BusinessCalendar(SETTINGS)

CONT = Application("OSS-C-1", "OFFICE-A", Procedure.CONTINUOUS, "VIN-1")
NEW = Application("OSS-N-1", "OFFICE-A", Procedure.NEW, "VIN-2", "INS-9", "N-900")


def jst(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=JST)


def ks(*kinds: CertificateKind) -> frozenset[CertificateKind]:
    return frozenset(kinds)


AT_1020 = jst(2026, 11, 30, 10, 20)
NEXT_1030 = jst(2026, 11, 30, 10, 30)


def chain(
    subject: Application,
    missing: frozenset[CertificateKind],
    found: frozenset[CertificateKind] = frozenset(),
    confirmed: frozenset[CertificateKind] = frozenset(),
    *,
    slot: datetime = AT_1020,
    used: int = 0,
    phase: Phase = Phase.SAME_DAY,
) -> Chain:
    cursor = Cursor(phase, used, pendulum.instance(slot))
    return Chain(
        chain_id="c-1",
        subject=subject,
        missing=missing,
        found=found,
        confirmed=confirmed,
        detected_at=jst(2026, 11, 30, 10, 14),
        attempts_made=used,
        cursor=cursor,
        version=1,
    )


# -- which certificates an attempt checks ------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "missing", "found", "confirmed", "expected"),
    [
        # continuous: the insurance certificate is looked up through the safety one
        (CONT, ks(SAFETY), ks(), ks(), ks(SAFETY, INSURANCE)),
        (CONT, ks(INSURANCE), ks(), ks(), ks(INSURANCE)),
        # the report's confirmed certificates are checked again (R3)
        (CONT, ks(INSURANCE), ks(), ks(SAFETY), ks(SAFETY, INSURANCE)),
        (CONT, ks(SAFETY), ks(), ks(INSURANCE), ks(SAFETY, INSURANCE)),
        # found at an earlier attempt: checked again
        (CONT, ks(INSURANCE), ks(SAFETY), ks(), ks(SAFETY, INSURANCE)),
        # new inspection: the insurance key is on the application
        (NEW, ks(COMPLETION), ks(), ks(), ks(COMPLETION)),
        (NEW, ks(COMPLETION), ks(), ks(INSURANCE), ks(COMPLETION, INSURANCE)),
        (NEW, ks(INSURANCE), ks(), ks(COMPLETION), ks(COMPLETION, INSURANCE)),
        (NEW, ks(INSURANCE), ks(COMPLETION), ks(), ks(COMPLETION, INSURANCE)),
    ],
)
def test_kinds_to_check_is_the_whole_set_of_the_procedure(
    subject: Application,
    missing: frozenset[CertificateKind],
    found: frozenset[CertificateKind],
    confirmed: frozenset[CertificateKind],
    expected: frozenset[CertificateKind],
) -> None:
    assert kinds_to_check(chain(subject, missing, found, confirmed)) == expected


# -- one attempt, given what the registry answers ---------------------------------------


@pytest.mark.parametrize(
    ("subject", "missing", "found", "confirmed", "present", "outcome", "named", "next_slot"),
    [
        # R8: still missing, nothing lost: go on
        (CONT, ks(INSURANCE), ks(), ks(SAFETY), ks(SAFETY), None, ks(INSURANCE), NEXT_1030),
        # R8: all present: resume
        (CONT, ks(INSURANCE), ks(), ks(SAFETY), ks(SAFETY, INSURANCE), Outcome.RESUMED, ks(),
         None),
        # R3: confirmed safety gone; the insurance cannot be looked up: safety named alone
        (CONT, ks(INSURANCE), ks(), ks(SAFETY), ks(), Outcome.AUTO_CORRECTED, ks(SAFETY), None),
        # R3: safety found at an earlier attempt, gone now
        (CONT, ks(INSURANCE), ks(SAFETY), ks(), ks(), Outcome.AUTO_CORRECTED, ks(SAFETY), None),
        # R3: confirmed insurance gone while its safety certificate is present
        (CONT, ks(SAFETY), ks(SAFETY), ks(INSURANCE), ks(SAFETY), Outcome.AUTO_CORRECTED,
         ks(INSURANCE), None),
        # safety still missing: the confirmed insurance is unknown, not lost
        (CONT, ks(SAFETY), ks(), ks(INSURANCE), ks(), None, ks(SAFETY), NEXT_1030),
        # both reported missing, neither there: both still missing
        (CONT, ks(SAFETY, INSURANCE), ks(), ks(), ks(), None, ks(SAFETY, INSURANCE), NEXT_1030),
        # safety missing, insurance not reported: its key is unknown, not named
        (CONT, ks(SAFETY), ks(), ks(), ks(), None, ks(SAFETY), NEXT_1030),
        # safety present, the insurance it names absent: now missing too
        (CONT, ks(SAFETY), ks(), ks(), ks(SAFETY), None, ks(INSURANCE), NEXT_1030),
        # new inspection: confirmed insurance deleted
        (NEW, ks(COMPLETION), ks(), ks(INSURANCE), ks(), Outcome.AUTO_CORRECTED, ks(INSURANCE),
         None),
        # new inspection: completion found earlier, used by another application now
        (NEW, ks(INSURANCE), ks(COMPLETION), ks(), ks(), Outcome.AUTO_CORRECTED, ks(COMPLETION),
         None),
        (NEW, ks(COMPLETION), ks(), ks(INSURANCE), ks(INSURANCE), None, ks(COMPLETION),
         NEXT_1030),
    ],
)  # fmt: skip
def test_one_attempt(
    subject: Application,
    missing: frozenset[CertificateKind],
    found: frozenset[CertificateKind],
    confirmed: frozenset[CertificateKind],
    present: frozenset[CertificateKind],
    outcome: Outcome | None,
    named: frozenset[CertificateKind],
    next_slot: datetime | None,
) -> None:
    decision = decide_attempt(chain(subject, missing, found, confirmed), present, CALENDAR, [])
    assert decision.outcome is outcome
    assert decision.missing == named
    if next_slot is None:
        assert decision.next_cursor is None
    else:
        assert decision.next_cursor is not None
        assert decision.next_cursor.slot == next_slot
    if outcome is Outcome.AUTO_CORRECTED:
        assert decision.reason.startswith("R3: ")


def test_r3_wins_over_the_last_attempt() -> None:
    # Attempt 6 of 6 finds the confirmed safety gone: R3 names it (not R8's insurance).
    last = chain(CONT, ks(INSURANCE), ks(), ks(SAFETY), slot=jst(2026, 11, 30, 11, 10), used=5)
    decision = decide_attempt(last, ks(), CALENDAR, [])
    assert (decision.outcome, decision.missing) == (Outcome.AUTO_CORRECTED, ks(SAFETY))
    assert decision.reason == "R3: safety found present earlier, missing now"


def test_r8_last_attempt_without_loss_names_what_is_missing() -> None:
    last = chain(CONT, ks(INSURANCE), ks(), ks(SAFETY), slot=jst(2026, 11, 30, 11, 10), used=5)
    decision = decide_attempt(last, ks(SAFETY), CALENDAR, [])
    assert (decision.outcome, decision.missing) == (Outcome.AUTO_CORRECTED, ks(INSURANCE))
    assert decision.reason == "R8: last attempt"


# -- whole chains through the pure core -----------------------------------------------------


@dataclass(frozen=True)
class Ending:
    outcome: Outcome
    attempts: tuple[datetime, ...]
    missing: frozenset[CertificateKind]


def walk(
    subject: Application,
    missing: frozenset[CertificateKind],
    confirmed: frozenset[CertificateKind],
    detected_at: datetime,
    certs: CertificateSet,
) -> Ending:
    """The service's loop without the database: each attempt judges R2 as of its slot."""
    current = Chain(
        chain_id="walk",
        subject=subject,
        missing=missing,
        found=frozenset(),
        confirmed=confirmed,
        detected_at=detected_at,
        attempts_made=0,
        cursor=start_chain(detected_at, CALENDAR),
        version=0,
    )
    attempts: list[datetime] = []
    while True:
        slot = current.cursor.slot
        attempts.append(slot)
        present = judge_presence(subject, kinds_to_check(current), slot, certs, SETTINGS)
        decision = decide_attempt(current, present, CALENDAR, [])
        if decision.next_cursor is None:
            assert decision.outcome is not None
            return Ending(decision.outcome, tuple(attempts), decision.missing)
        current = replace(
            current,
            missing=decision.missing,
            found=decision.found,
            attempts_made=current.attempts_made + 1,
            cursor=decision.next_cursor,
        )


def safety(available: datetime, deleted: datetime | None = None) -> SafetyCertificate:
    return SafetyCertificate(
        "S-1", "VIN-1", date(2026, 11, 25), "INS-1", "NO-1", available, deleted_at=deleted
    )


def insurance(available: datetime, deleted: datetime | None = None) -> InsuranceCertificate:
    return InsuranceCertificate("I-1", "INS-1", "NO-1", "VIN-1", available, deleted_at=deleted)


def grid(day: datetime, *times: tuple[int, int]) -> tuple[datetime, ...]:
    return tuple(jst(day.year, day.month, day.day, h, m) for h, m in times)


MON = jst(2026, 11, 30)


@pytest.mark.parametrize(
    ("name", "missing", "confirmed", "detected", "certs", "expected"),
    [
        (
            # The example: confirmed safety deleted at 10:33, insurance never comes.
            "confirmed-safety-deleted",
            ks(INSURANCE),
            ks(SAFETY),
            jst(2026, 11, 30, 10, 14),
            CertificateSet(safety=(safety(jst(2026, 11, 27, 9, 0), jst(2026, 11, 30, 10, 33)),)),
            Ending(
                Outcome.AUTO_CORRECTED,
                grid(MON, (10, 20), (10, 30), (10, 40)),
                ks(SAFETY),
            ),
        ),
        (
            # The same without the deletion: six attempts, insurance named (R8).
            "confirmed-safety-kept",
            ks(INSURANCE),
            ks(SAFETY),
            jst(2026, 11, 30, 10, 14),
            CertificateSet(safety=(safety(jst(2026, 11, 27, 9, 0)),)),
            Ending(
                Outcome.AUTO_CORRECTED,
                grid(MON, (10, 20), (10, 30), (10, 40), (10, 50), (11, 0), (11, 10)),
                ks(INSURANCE),
            ),
        ),
        (
            # Insurance arrives at 10:25: resume at 10:30.
            "insurance-arrives",
            ks(INSURANCE),
            ks(SAFETY),
            jst(2026, 11, 30, 10, 14),
            CertificateSet(
                safety=(safety(jst(2026, 11, 27, 9, 0)),),
                insurance=(insurance(jst(2026, 11, 30, 10, 25)),),
            ),
            Ending(Outcome.RESUMED, grid(MON, (10, 20), (10, 30)), ks()),
        ),
        (
            # Confirmed insurance deleted at 10:15; safety arrives 10:35: R3 at 10:40.
            "confirmed-insurance-deleted",
            ks(SAFETY),
            ks(INSURANCE),
            jst(2026, 11, 30, 10, 14),
            CertificateSet(
                safety=(safety(jst(2026, 11, 30, 10, 35)),),
                insurance=(insurance(jst(2026, 11, 1, 9, 0), jst(2026, 11, 30, 10, 15)),),
            ),
            Ending(Outcome.AUTO_CORRECTED, grid(MON, (10, 20), (10, 30), (10, 40)), ks(INSURANCE)),
        ),
        (
            # R2: the confirmed safety certificate (inspected 11-16) is valid through
            # 11-30; the chain parks at close and the Tue 08:30 attempt finds it expired.
            "confirmed-safety-expires",
            ks(INSURANCE),
            ks(SAFETY),
            jst(2026, 11, 30, 15, 35),
            CertificateSet(
                safety=(
                    SafetyCertificate(
                        "S-1",
                        "VIN-1",
                        date(2026, 11, 16),
                        "INS-1",
                        "NO-1",
                        jst(2026, 11, 16, 12, 0),
                    ),
                )
            ),
            Ending(
                Outcome.AUTO_CORRECTED,
                (*grid(MON, (15, 40), (15, 50)), jst(2026, 12, 1, 8, 30)),
                ks(SAFETY),
            ),
        ),
        (
            # New inspection: the confirmed insurance is deleted at 10:45.
            "new-confirmed-insurance-deleted",
            ks(COMPLETION),
            ks(INSURANCE),
            jst(2026, 11, 30, 10, 14),
            CertificateSet(
                insurance=(
                    InsuranceCertificate(
                        "I-9",
                        "INS-9",
                        "N-900",
                        "VIN-2",
                        jst(2026, 11, 1, 9, 0),
                        deleted_at=jst(2026, 11, 30, 10, 45),
                    ),
                ),
                completion=(
                    CompletionCertificate(
                        "C-9", "VIN-2", date(2026, 11, 1), jst(2026, 11, 30, 11, 5)
                    ),
                ),
            ),
            Ending(
                Outcome.AUTO_CORRECTED,
                grid(MON, (10, 20), (10, 30), (10, 40), (10, 50)),
                ks(INSURANCE),
            ),
        ),
    ],
)
def test_whole_chain(
    name: str,
    missing: frozenset[CertificateKind],
    confirmed: frozenset[CertificateKind],
    detected: datetime,
    certs: CertificateSet,
    expected: Ending,
) -> None:
    subject = NEW if COMPLETION in missing | confirmed else CONT
    assert walk(subject, missing, confirmed, detected, certs) == expected, name
