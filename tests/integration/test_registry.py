"""The Kei-MOTAS registry over SQL (R1, R2) "as of" an instant, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from retry_pipeline.adapters.db import make_sessions
from retry_pipeline.adapters.registry import SqlCertificateRegistry, to_row
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.config import Settings
from retry_pipeline.model import (
    Application,
    Certificate,
    CertificateKind,
    CompletionCertificate,
    InsuranceCertificate,
    Procedure,
    SafetyCertificate,
)

TOKYO = ZoneInfo("Asia/Tokyo")
SAFETY = CertificateKind.SAFETY
INSURANCE = CertificateKind.INSURANCE
COMPLETION = CertificateKind.COMPLETION
NOTHING: frozenset[CertificateKind] = frozenset()

AS_OF = datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)  # an attempt's slot
LINKED = datetime(2026, 11, 26, 17, 0, tzinfo=TOKYO)  # copied into Kei-MOTAS the day before
INSPECTED = date(2026, 11, 20)  # well inside the 15 days of R2

Insert = Callable[..., None]


@pytest.fixture
def engine(store: RetryStore) -> Engine:
    return store.engine


@pytest.fixture
def registry(engine: Engine, settings: Settings) -> SqlCertificateRegistry:
    return SqlCertificateRegistry(engine, settings)


@pytest.fixture
def insert(engine: Engine) -> Insert:
    sessions = make_sessions(engine)

    def _insert(*certs: Certificate) -> None:
        with sessions() as session, session.begin():
            session.add_all([to_row(c) for c in certs])

    return _insert


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def continuous(insurer_id: str | None = None, insurance_no: str | None = None) -> Application:
    return Application(
        application=uid("app"),
        office="OFFICE-A",
        procedure=Procedure.CONTINUOUS,
        vehicle=uid("VIN"),
        insurer_id=insurer_id,
        insurance_no=insurance_no,
    )


def new_inspection(
    insurer_id: str | None = "INS-1", insurance_no: str | None = None
) -> Application:
    return Application(
        application=uid("app"),
        office="OFFICE-A",
        procedure=Procedure.NEW,
        vehicle=uid("VIN"),
        insurer_id=insurer_id,
        insurance_no=uid("NO") if insurance_no is None and insurer_id else insurance_no,
    )


def safety_for(
    subject: Application,
    *,
    inspected_on: date = INSPECTED,
    insurer_id: str = "INS-1",
    insurance_no: str = "NO-1",
    available_at: datetime = LINKED,
    used_by: str | None = None,
    deleted_at: datetime | None = None,
) -> SafetyCertificate:
    return SafetyCertificate(
        id=uid("S"),
        vehicle=subject.vehicle,
        inspected_on=inspected_on,
        insurer_id=insurer_id,
        insurance_no=insurance_no,
        available_at=available_at,
        used_by=used_by,
        deleted_at=deleted_at,
    )


def insurance(
    insurer_id: str,
    insurance_no: str,
    *,
    vehicle: str = "VIN-any",
    available_at: datetime = LINKED,
    deleted_at: datetime | None = None,
) -> InsuranceCertificate:
    return InsuranceCertificate(
        id=uid("I"),
        insurer_id=insurer_id,
        insurance_no=insurance_no,
        vehicle=vehicle,
        available_at=available_at,
        deleted_at=deleted_at,
    )


def completion_for(
    subject: Application,
    *,
    issued_on: date = date(2026, 6, 1),
    available_at: datetime = LINKED,
    used_by: str | None = None,
    deleted_at: datetime | None = None,
) -> CompletionCertificate:
    return CompletionCertificate(
        id=uid("C"),
        vehicle=subject.vehicle,
        issued_on=issued_on,
        available_at=available_at,
        used_by=used_by,
        deleted_at=deleted_at,
    )


# -- "as of": the linkage lag (Background) -------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        pytest.param(datetime(2026, 11, 27, 8, 44, 59, tzinfo=TOKYO), NOTHING, id="before"),
        pytest.param(datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO), {SAFETY}, id="at"),
        pytest.param(datetime(2026, 11, 26, 23, 50, tzinfo=UTC), {SAFETY}, id="after-utc"),
    ],
)
def test_r2_certificate_counts_from_its_availability(
    registry: SqlCertificateRegistry, insert: Insert, as_of: datetime, expected: set[str]
) -> None:
    subject = continuous()
    insert(safety_for(subject, available_at=datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO)))
    assert registry.present(subject, frozenset({SAFETY}), as_of) == frozenset(expected)


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        pytest.param(datetime(2026, 11, 27, 8, 59, 59, tzinfo=TOKYO), {SAFETY}, id="before"),
        pytest.param(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO), NOTHING, id="at"),
        pytest.param(datetime(2026, 11, 27, 9, 10, tzinfo=TOKYO), NOTHING, id="after"),
    ],
)
def test_r2_deleted_certificate_is_absent_from_its_deletion(
    registry: SqlCertificateRegistry, insert: Insert, as_of: datetime, expected: set[str]
) -> None:
    subject = continuous()
    insert(safety_for(subject, deleted_at=datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO)))
    assert registry.present(subject, frozenset({SAFETY}), as_of) == frozenset(expected)


# -- R2: unused, within validity ------------------------------------------------------------


def test_r2_safety_used_by_another_application_is_absent(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    insert(safety_for(subject, used_by=uid("other-app")))
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == NOTHING


def test_r2_safety_used_by_the_same_application_is_present(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    insert(safety_for(subject, used_by=subject.application))
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == {SAFETY}


def test_r2_safety_of_another_vehicle_is_absent(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    insert(safety_for(continuous()))
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == NOTHING


def test_r2_an_unusable_safety_does_not_hide_a_usable_one(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    insert(
        safety_for(subject, used_by=uid("other-app")),
        safety_for(subject, deleted_at=datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO)),
        safety_for(subject, inspected_on=date(2026, 11, 1)),  # expired
    )
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == NOTHING
    insert(safety_for(subject))
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == {SAFETY}


@pytest.mark.parametrize(
    ("inspected_on", "as_of", "expected"),
    [
        # Inspected 2026-11-13 is day 1; day 15 is 2026-11-27 (R2).
        pytest.param(
            date(2026, 11, 13), datetime(2026, 11, 27, 23, 59, tzinfo=TOKYO), {SAFETY}, id="day-15"
        ),
        pytest.param(
            date(2026, 11, 13), datetime(2026, 11, 28, 0, 0, tzinfo=TOKYO), NOTHING, id="day-16"
        ),
        pytest.param(
            # 15:00 UTC on the 27th is already the 28th in Japan: the rules read Japan dates.
            date(2026, 11, 13),
            datetime(2026, 11, 27, 15, 0, tzinfo=UTC),
            NOTHING,
            id="day-16-given-in-utc",
        ),
        pytest.param(
            date(2026, 11, 27), datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO), {SAFETY}, id="day-1"
        ),
        pytest.param(
            date(2026, 11, 28), datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO), NOTHING, id="future"
        ),
    ],
)
def test_r2_safety_valid_for_15_days_inspection_day_1(
    registry: SqlCertificateRegistry,
    insert: Insert,
    inspected_on: date,
    as_of: datetime,
    expected: set[str],
) -> None:
    subject = continuous()
    insert(
        safety_for(
            subject, inspected_on=inspected_on, available_at=datetime(2026, 11, 1, tzinfo=UTC)
        )
    )
    assert registry.present(subject, frozenset({SAFETY}), as_of) == frozenset(expected)


def test_r2_safety_validity_is_configurable(insert: Insert, engine: Engine) -> None:
    registry = SqlCertificateRegistry(engine, Settings(safety_validity_days=3))
    subject = continuous()
    insert(safety_for(subject, inspected_on=date(2026, 11, 25)))
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == {SAFETY}  # day 3
    day_4 = datetime(2026, 11, 28, 8, 30, tzinfo=TOKYO)
    assert registry.present(subject, frozenset({SAFETY}), day_4) == NOTHING


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        # Issued 2026-01-15: 9 months run through 2026-10-14 (D in rules.py).
        pytest.param(datetime(2026, 1, 15, 9, 0, tzinfo=TOKYO), {COMPLETION}, id="issue-day"),
        pytest.param(datetime(2026, 10, 14, 23, 59, tzinfo=TOKYO), {COMPLETION}, id="last-day"),
        pytest.param(datetime(2026, 10, 15, 0, 0, tzinfo=TOKYO), NOTHING, id="expired"),
        pytest.param(datetime(2026, 1, 14, 23, 59, tzinfo=TOKYO), NOTHING, id="before-issue"),
    ],
)
def test_r2_completion_valid_for_9_months(
    registry: SqlCertificateRegistry, insert: Insert, as_of: datetime, expected: set[str]
) -> None:
    subject = new_inspection()
    insert(
        completion_for(
            subject, issued_on=date(2026, 1, 15), available_at=datetime(2026, 1, 1, tzinfo=UTC)
        )
    )
    assert registry.present(subject, frozenset({COMPLETION}), as_of) == frozenset(expected)


@pytest.mark.parametrize(
    ("used_by", "deleted", "expected"),
    [
        pytest.param(None, False, {COMPLETION}, id="unused"),
        pytest.param("self", False, {COMPLETION}, id="used-by-same-application"),
        pytest.param("other", False, NOTHING, id="used-by-another"),
        pytest.param(None, True, NOTHING, id="deleted"),
    ],
)
def test_r1_r2_completion_must_be_unused(
    registry: SqlCertificateRegistry,
    insert: Insert,
    used_by: str | None,
    deleted: bool,
    expected: set[str],
) -> None:
    subject = new_inspection()
    owner = {None: None, "self": subject.application, "other": uid("other-app")}[used_by]
    deleted_at = datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO) if deleted else None
    insert(completion_for(subject, used_by=owner, deleted_at=deleted_at))
    assert registry.present(subject, frozenset({COMPLETION}), AS_OF) == frozenset(expected)


# -- R1: the insurance key --------------------------------------------------------------------


def test_r1_continuous_insurance_by_key_on_safety_certificate(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    key = (uid("INS"), uid("NO"))
    insert(safety_for(subject, insurer_id=key[0], insurance_no=key[1]), insurance(*key))
    assert registry.present(subject, frozenset({INSURANCE}), AS_OF) == {INSURANCE}
    assert registry.present(subject, frozenset({SAFETY, INSURANCE}), AS_OF) == {SAFETY, INSURANCE}
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == {SAFETY}  # only what is asked


@pytest.mark.parametrize("differs", ["insurer_id", "insurance_no", "both"])
def test_r1_continuous_insurance_under_another_key_is_absent(
    registry: SqlCertificateRegistry, insert: Insert, differs: str
) -> None:
    subject = continuous()
    insurer, number = uid("INS"), uid("NO")
    other_insurer = uid("INS") if differs in ("insurer_id", "both") else insurer
    other_number = uid("NO") if differs in ("insurance_no", "both") else number
    insert(
        safety_for(subject, insurer_id=insurer, insurance_no=number),
        insurance(other_insurer, other_number, vehicle=subject.vehicle),
    )
    assert registry.present(subject, frozenset({SAFETY, INSURANCE}), AS_OF) == {SAFETY}


def test_r1_continuous_insurance_absent_without_safety_certificate(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    key = (uid("INS"), uid("NO"))
    # Even a key given with the application does not count: it is read off the safety certificate.
    subject = continuous(*key)
    insert(insurance(*key, vehicle=subject.vehicle))
    assert registry.present(subject, frozenset({SAFETY, INSURANCE}), AS_OF) == NOTHING
    assert registry.present(subject, frozenset({INSURANCE}), AS_OF) == NOTHING


def test_r1_continuous_insurance_absent_when_safety_certificate_not_valid(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    key = (uid("INS"), uid("NO"))
    insert(
        safety_for(subject, insurer_id=key[0], insurance_no=key[1], inspected_on=date(2026, 11, 1)),
        insurance(*key),
    )
    assert registry.present(subject, frozenset({INSURANCE}), AS_OF) == NOTHING


def test_r1_continuous_insurance_waits_for_the_safety_certificate(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = continuous()
    key = (uid("INS"), uid("NO"))
    insert(
        safety_for(
            subject,
            insurer_id=key[0],
            insurance_no=key[1],
            available_at=datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO),
        ),
        insurance(*key),
    )
    kinds = frozenset({INSURANCE})
    assert registry.present(subject, kinds, AS_OF) == NOTHING
    assert registry.present(subject, kinds, datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO)) == kinds


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        pytest.param(datetime(2026, 11, 27, 8, 44, tzinfo=TOKYO), NOTHING, id="not-yet-linked"),
        pytest.param(datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO), {INSURANCE}, id="linked"),
        pytest.param(datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO), NOTHING, id="deleted"),
    ],
)
def test_r2_insurance_as_of(
    registry: SqlCertificateRegistry, insert: Insert, as_of: datetime, expected: set[str]
) -> None:
    subject = continuous()
    key = (uid("INS"), uid("NO"))
    insert(
        safety_for(subject, insurer_id=key[0], insurance_no=key[1]),
        insurance(
            *key,
            available_at=datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO),
            deleted_at=datetime(2026, 11, 27, 9, 0, tzinfo=TOKYO),
        ),
    )
    assert registry.present(subject, frozenset({INSURANCE}), as_of) == frozenset(expected)


def test_r1_new_inspection_insurance_by_application_key(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = new_inspection(uid("INS"), uid("NO"))
    assert subject.insurer_id is not None and subject.insurance_no is not None
    # A safety certificate naming another key plays no part in a new inspection.
    insert(
        safety_for(subject, insurer_id=uid("INS"), insurance_no=uid("NO")),
        insurance(subject.insurer_id, subject.insurance_no),
    )
    assert registry.present(subject, frozenset({INSURANCE}), AS_OF) == {INSURANCE}


def test_r1_new_inspection_insurance_under_another_key_is_absent(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = new_inspection(uid("INS"), uid("NO"))
    assert subject.insurer_id is not None
    insert(
        insurance(subject.insurer_id, uid("NO"), vehicle=subject.vehicle),
        insurance(uid("INS"), str(subject.insurance_no), vehicle=subject.vehicle),
    )
    assert registry.present(subject, frozenset({INSURANCE}), AS_OF) == NOTHING


def test_r1_new_inspection_without_insurance_key_is_absent(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = new_inspection(None, None)
    insert(insurance(uid("INS"), uid("NO"), vehicle=subject.vehicle))
    assert registry.present(subject, frozenset({INSURANCE}), AS_OF) == NOTHING


def test_r1_new_inspection_completion_and_insurance_together(
    registry: SqlCertificateRegistry, insert: Insert
) -> None:
    subject = new_inspection(uid("INS"), uid("NO"))
    assert subject.insurer_id is not None and subject.insurance_no is not None
    kinds = frozenset({COMPLETION, INSURANCE})
    assert registry.present(subject, kinds, AS_OF) == NOTHING
    insert(completion_for(subject))
    assert registry.present(subject, kinds, AS_OF) == {COMPLETION}
    insert(insurance(subject.insurer_id, subject.insurance_no))
    assert registry.present(subject, kinds, AS_OF) == kinds


def test_present_in_reads_the_callers_transaction(
    registry: SqlCertificateRegistry, engine: Engine
) -> None:
    subject = continuous()
    with make_sessions(engine)() as session, session.begin():
        session.add(to_row(safety_for(subject)))
        session.flush()
        assert registry.present_in(session, subject, frozenset({SAFETY}), AS_OF) == {SAFETY}
        session.rollback()
    assert registry.present(subject, frozenset({SAFETY}), AS_OF) == NOTHING
