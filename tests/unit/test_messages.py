"""The message contract of ``retry_pipeline.report_missing``: bad input refused, with reasons.

``parse_report`` turns a message (a dict, or JSON text) into a Report or raises
InvalidReport naming what is wrong; nothing else ever escapes it (hypothesis). R1
non-targets are refused afterwards by ``admit_report`` with NotARetryTarget, a kind
of InvalidReport, so the worker dead-letters both alike.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidReport, NotARetryTarget
from retry_pipeline.messages import MAX_PAYLOAD_BYTES, parse_report
from retry_pipeline.model import CertificateKind, Procedure, Report
from retry_pipeline.rules import admit_report

JST = ZoneInfo("Asia/Tokyo")
DETECTED = datetime(2026, 11, 27, 8, 36, tzinfo=JST)  # the notice's example (R9)
FIELDS = (
    "application",
    "office",
    "procedure",
    "vehicle",
    "missing",
    "confirmed",
    "detected_at",
    "insurer_id",
    "insurance_no",
)
REQUIRED = ("application", "office", "procedure", "vehicle", "missing", "detected_at")


def unique_id(prefix: str = "OSS") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def continuous_report(**changes: Any) -> dict[str, Any]:
    """A valid continuous-inspection report; ``changes`` replace fields (``...`` drops one)."""
    body: dict[str, Any] = {
        "application": unique_id(),
        "office": "OSK01",
        "procedure": "continuous",
        "vehicle": "JA11-123456",
        "missing": ["safety"],
        "confirmed": [],
        "detected_at": "2026-11-27T08:36:00+09:00",
    }
    return _apply(body, changes)


def new_report(**changes: Any) -> dict[str, Any]:
    """A valid new-inspection report (insurer fields given with the application, R1.4)."""
    body: dict[str, Any] = {
        "application": unique_id(),
        "office": "OSK01",
        "procedure": "new",
        "vehicle": "JA22-654321",
        "missing": ["completion", "insurance"],
        "confirmed": [],
        "detected_at": "2026-11-27T08:36:00+09:00",
        "insurer_id": "INS-9",
        "insurance_no": "N-900",
    }
    return _apply(body, changes)


def _apply(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def refusal(payload: Any) -> str:
    """The reason ``parse_report`` gives; fails the test when it accepts the payload."""
    with pytest.raises(InvalidReport) as info:
        parse_report(payload)
    assert not isinstance(info.value, NotARetryTarget)  # R1 is decided later, not here
    reason = str(info.value)
    assert reason.strip(), "a refusal must say why"
    return reason


# --- bad input, one case per way a message can be wrong ----------------------------------------

# (case id, payload, words the reason must contain)
BAD_REPORTS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("broken-json-text", '{"application": "A-1", "office": ', ("not JSON",)),
    ("json-text-not-json", "report please", ("not JSON",)),
    ("non-object-list", ["safety"], ("JSON object", "list")),
    ("non-object-int", 42, ("JSON object", "int")),
    ("non-object-string-json", '"a string"', ("JSON object", "str")),
    ("non-object-null-json", "null", ("JSON object", "NoneType")),
    *[
        (f"missing-{field}", continuous_report(**{field: ...}), (field, "required"))
        for field in REQUIRED
    ],
    ("empty-object", {}, ("application", "required")),
    ("extra-field", continuous_report(priority="high"), ("priority", "not permitted")),
    ("extra-field-nested-name", continuous_report(chain_id="c-1"), ("chain_id", "not permitted")),
    ("wrong-type-application", continuous_report(application=12345), ("application", "string")),
    ("wrong-type-office", continuous_report(office=["OSK01"]), ("office", "string")),
    ("wrong-type-vehicle", continuous_report(vehicle=True), ("vehicle", "string")),
    ("wrong-type-missing-str", continuous_report(missing="safety"), ("missing", "list")),
    ("wrong-type-missing-obj", continuous_report(missing={"safety": 1}), ("missing", "list")),
    ("wrong-type-confirmed", continuous_report(confirmed="insurance"), ("confirmed", "list")),
    ("wrong-type-confirmed-null", continuous_report(confirmed=None), ("confirmed", "list")),
    ("wrong-type-procedure", continuous_report(procedure=1), ("procedure",)),
    ("wrong-type-detected-at", continuous_report(detected_at=["2026-11-27"]), ("detected_at",)),
    ("not-a-date-time", continuous_report(detected_at="yesterday morning"), ("detected_at",)),
    ("unknown-procedure", continuous_report(procedure="renewal"), ("procedure", "continuous")),
    ("unknown-procedure-japanese", continuous_report(procedure="継続検査"), ("procedure",)),
    ("unknown-kind-missing", continuous_report(missing=["registration"]), ("missing.0", "safety")),
    (
        "unknown-kind-among-known",
        continuous_report(missing=["safety", "inspection_record"]),
        ("missing.1",),
    ),
    ("unknown-kind-confirmed", continuous_report(confirmed=["photo"]), ("confirmed.0",)),
    ("empty-missing", continuous_report(missing=[]), ("missing", "at least 1")),
    ("missing-too-long", continuous_report(missing=["safety"] * 4), ("missing", "at most 3")),
    (
        "detected-at-naive",
        continuous_report(detected_at="2026-11-27T08:36:00"),
        ("detected_at", "timezone"),
    ),
    (
        "detected-at-naive-space",
        continuous_report(detected_at="2026-11-27 08:36"),
        ("detected_at", "timezone"),
    ),
    ("detected-at-date-only", continuous_report(detected_at="2026-11-27"), ("detected_at",)),
    (
        "new-without-insurer-fields",
        new_report(insurer_id=..., insurance_no=...),
        ("insurer_id", "insurance_no", "new"),
    ),
    ("new-without-insurance-no", new_report(insurance_no=...), ("insurance_no",)),
    ("new-without-insurer-id", new_report(insurer_id=...), ("insurer_id",)),
    ("new-with-null-insurer", new_report(insurer_id=None), ("insurer_id",)),
    (
        "continuous-with-insurer-fields",
        continuous_report(insurer_id="INS-9", insurance_no="N-900"),
        ("insurer_id", "continuous"),
    ),
    ("continuous-with-insurer-id", continuous_report(insurer_id="INS-9"), ("insurer_id",)),
    (
        "oversized-field",
        continuous_report(office="X" * (MAX_PAYLOAD_BYTES + 1)),
        ("exceeds", str(MAX_PAYLOAD_BYTES)),
    ),
    (
        "oversized-extra",
        continuous_report(padding="p" * MAX_PAYLOAD_BYTES),
        ("exceeds", str(MAX_PAYLOAD_BYTES)),
    ),
    (
        "oversized-json-text",
        json.dumps(continuous_report(padding="p" * MAX_PAYLOAD_BYTES)),
        ("exceeds", str(MAX_PAYLOAD_BYTES)),
    ),
    ("application-with-space", continuous_report(application="OSS 1"), ("application",)),
    ("application-with-nul", continuous_report(application="OSS\x001"), ("application",)),
    ("application-with-newline", continuous_report(application="OSS-1\nOSS-2"), ("application",)),
    ("application-with-tab", continuous_report(application="OSS\t1"), ("application",)),
    ("application-with-escape", continuous_report(application="OSS\x1b[2J1"), ("application",)),
    ("application-with-del", continuous_report(application="OSS\x7f1"), ("application",)),
    ("application-blank", continuous_report(application="   "), ("application",)),
    ("application-too-long", continuous_report(application="A" * 65), ("application",)),
    ("vehicle-with-space", continuous_report(vehicle="JA11 123456"), ("vehicle",)),
    ("vehicle-with-control", continuous_report(vehicle="JA11\x07123456"), ("vehicle",)),
    ("insurer-id-with-space", new_report(insurer_id="INS 9"), ("insurer_id",)),
    ("insurance-no-with-control", new_report(insurance_no="N\x00900"), ("insurance_no",)),
    ("office-blank", continuous_report(office=" "), ("office",)),
    ("office-too-long", continuous_report(office="O" * 33), ("office",)),
]


@pytest.mark.parametrize(
    ("payload", "words"),
    [pytest.param(p, w, id=case) for case, p, w in BAD_REPORTS],
)
def test_bad_report_is_refused_with_a_reason(payload: Any, words: tuple[str, ...]) -> None:
    reason = refusal(payload)
    for word in words:
        assert word.lower() in reason.lower(), f"reason {reason!r} does not name {word!r}"


@pytest.mark.parametrize("field", REQUIRED)
def test_each_missing_field_is_named(field: str) -> None:
    reason = refusal(continuous_report(**{field: ...}))
    assert reason.startswith(f"{field}:"), reason
    assert "Field required" in reason


def test_all_problems_are_listed_not_only_the_first() -> None:
    reason = refusal(continuous_report(application=..., missing=[], extra=1))
    assert "application" in reason
    assert "missing" in reason
    assert "extra" in reason


@pytest.mark.parametrize(
    "office",
    ["OSK\x0001", "OSK\n01", "OSK\x1b[2J01"],
    ids=["nul", "newline", "escape"],
)
def test_office_code_with_control_characters_is_refused(office: str) -> None:
    # The office code is an id too (R15 keys the office view on it): a NUL cannot even be
    # stored in PostgreSQL text, and a newline forges lines in the office view and logs.
    reason = refusal(continuous_report(office=office))
    assert "office" in reason


@pytest.mark.parametrize(
    "detected_at",
    [0, 1_795_000_000.5, True],
    ids=["epoch-zero", "epoch-float", "bool"],
)
def test_detected_at_as_a_number_is_refused(detected_at: Any) -> None:
    # The contract is ISO 8601 with an offset; a number carries no offset and would be
    # read as UTC (1970-01-01 for 0), i.e. guessed, which the contract forbids.
    reason = refusal(continuous_report(detected_at=detected_at))
    assert "detected_at" in reason


def test_oversized_payload_is_refused_before_validation() -> None:
    # An otherwise valid report padded with a huge *known* field is refused for its size.
    big = continuous_report(vehicle="V" * (MAX_PAYLOAD_BYTES * 2))
    assert "exceeds" in refusal(big)
    assert "exceeds" in refusal(json.dumps(big))
    assert "exceeds" in refusal(json.dumps(big).encode())


def test_payload_just_under_the_limit_is_not_refused_for_size() -> None:
    body = continuous_report(application="A-" + "1" * 60)
    assert len(json.dumps(body)) < MAX_PAYLOAD_BYTES
    assert parse_report(body).subject.application == "A-" + "1" * 60


def test_bytes_that_are_not_utf8_are_refused() -> None:
    assert "not JSON" in refusal(b"\xff\xfe\x00{")


# --- good input -----------------------------------------------------------------------------


def test_valid_continuous_report_with_jst_offset() -> None:
    body = continuous_report(missing=["safety", "insurance"], confirmed=[])
    report = parse_report(body)
    assert isinstance(report, Report)
    assert report.subject.application == body["application"]
    assert report.subject.office == "OSK01"
    assert report.subject.procedure is Procedure.CONTINUOUS
    assert report.subject.vehicle == "JA11-123456"
    assert report.subject.insurer_id is None
    assert report.subject.insurance_no is None
    assert report.missing == frozenset({CertificateKind.SAFETY, CertificateKind.INSURANCE})
    assert report.confirmed == frozenset()
    assert report.detected_at == DETECTED
    assert report.detected_at.utcoffset() == timedelta(hours=9)


def test_valid_report_with_z_offset_is_the_same_instant() -> None:
    body = continuous_report(detected_at="2026-11-26T23:36:00Z")
    report = parse_report(body)
    assert report.detected_at == DETECTED
    assert report.detected_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    ["2026-11-27T08:36:00+09:00", "2026-11-26T23:36:00Z", "2026-11-26T23:36:00+00:00"],
)
def test_offsets_name_one_instant(text: str) -> None:
    assert parse_report(continuous_report(detected_at=text)).detected_at == DETECTED


def test_valid_new_inspection_report() -> None:
    report = parse_report(new_report())
    assert report.subject.procedure is Procedure.NEW
    assert report.subject.insurer_id == "INS-9"
    assert report.subject.insurance_no == "N-900"
    assert report.missing == frozenset({CertificateKind.COMPLETION, CertificateKind.INSURANCE})


def test_confirmed_may_be_omitted() -> None:
    assert parse_report(continuous_report(confirmed=...)).confirmed == frozenset()


def test_valid_report_as_json_text_and_bytes() -> None:
    body = continuous_report()
    expected = parse_report(body)
    assert parse_report(json.dumps(body)) == expected
    assert parse_report(json.dumps(body).encode("utf-8")) == expected


# --- R1: pairs that are not retry targets --------------------------------------------------------


def test_r1_continuous_completion_is_not_a_retry_target() -> None:
    report = parse_report(continuous_report(missing=["completion"]))  # the schema allows it
    with pytest.raises(NotARetryTarget, match="completion") as info:
        admit_report(report, Settings())
    assert isinstance(info.value, InvalidReport)  # so the worker dead-letters it
    assert "continuous" in str(info.value)


def test_r1_new_safety_is_not_a_retry_target() -> None:
    report = parse_report(new_report(missing=["safety"]))
    in_force = Settings(new_inspection_retry_from=date(2026, 1, 1))
    with pytest.raises(NotARetryTarget, match="safety") as info:
        admit_report(report, in_force)
    assert "new" in str(info.value)


def test_r1_new_safety_is_refused_even_before_new_inspection_retries_start() -> None:
    report = parse_report(new_report(missing=["completion", "safety"]))
    with pytest.raises(NotARetryTarget, match="safety"):
        admit_report(report, Settings())  # start date unset


def test_r1_non_target_in_confirmed_is_refused_too() -> None:
    report = parse_report(continuous_report(missing=["safety"], confirmed=["completion"]))
    with pytest.raises(NotARetryTarget, match="completion"):
        admit_report(report, Settings())


@pytest.mark.parametrize(
    "body",
    [
        continuous_report(missing=["safety"]),
        continuous_report(missing=["insurance"]),
        continuous_report(missing=["safety", "insurance"]),
    ],
    ids=["safety", "insurance", "both"],
)
def test_r1_targets_are_admitted(body: dict[str, Any]) -> None:
    assert admit_report(parse_report(body), Settings()).retry is True


# --- fuzzing (hypothesis) ---------------------------------------------------------------------

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)


def parse_or_refuse(payload: Any) -> Report | None:
    """Report, or None when refused; any other exception fails the property."""
    try:
        report = parse_report(payload)
    except InvalidReport as exc:
        assert str(exc)
        return None
    assert isinstance(report, Report)
    # Whatever got through keeps the contract's invariants.
    assert report.missing, "an accepted report has something missing"
    assert report.detected_at.utcoffset() is not None
    assert report.subject.procedure in (Procedure.CONTINUOUS, Procedure.NEW)
    return report


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json_values(value: Any) -> None:
    parse_or_refuse(value)


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json_values_as_text(value: Any) -> None:
    parse_or_refuse(json.dumps(value))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text_and_bytes(raw: str | bytes) -> None:
    parse_or_refuse(raw)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=len(FIELDS)))
def test_fuzz_known_fields_with_random_values(body: dict[str, Any]) -> None:
    parse_or_refuse(body)


valid_bodies = st.sampled_from(["continuous", "new"]).map(
    lambda kind: continuous_report() if kind == "continuous" else new_report()
)


@FUZZ
@given(valid_bodies, st.data())
def test_fuzz_drop_a_key(body: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(body)))
    del body[key]
    report = parse_or_refuse(body)
    if key == "confirmed":
        assert report is not None  # optional, defaults to []
    else:
        assert report is None, f"accepted a report without {key}"


@FUZZ
@given(valid_bodies, st.text(min_size=1, max_size=20), json_values)
def test_fuzz_add_a_key(body: dict[str, Any], key: str, value: Any) -> None:
    assume(key not in FIELDS)
    body[key] = value
    assert parse_or_refuse(body) is None, f"accepted an extra field {key!r}"


@FUZZ
@given(valid_bodies, st.data(), json_values)
def test_fuzz_replace_a_value(body: dict[str, Any], data: st.DataObject, value: Any) -> None:
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = value
    parse_or_refuse(body)


@FUZZ
@given(valid_bodies, st.data(), json_values)
def test_fuzz_mutated_report_as_json_text(
    body: dict[str, Any], data: st.DataObject, value: Any
) -> None:
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = value
    parse_or_refuse(json.dumps(body))


ident_chars = st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-./:_")
idents = st.text(ident_chars, min_size=1, max_size=64).filter(lambda s: s.strip())
instants = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2040, 12, 31),
    timezones=st.sampled_from([UTC, JST, timezone(timedelta(hours=-5))]),
)


@FUZZ
@given(
    idents,
    st.text(ident_chars, min_size=1, max_size=32).filter(lambda s: s.strip()),
    idents,
    st.sets(st.sampled_from(["safety", "insurance", "completion"]), min_size=1),
    instants,
    st.booleans(),
)
def test_fuzz_well_formed_reports_round_trip(
    application: str,
    office: str,
    vehicle: str,
    missing: set[str],
    detected_at: datetime,
    as_z: bool,
) -> None:
    text = detected_at.isoformat()
    if as_z and detected_at.utcoffset() == timedelta(0):
        text = text.replace("+00:00", "Z")
    body = {
        "application": application,
        "office": office,
        "procedure": "continuous",
        "vehicle": vehicle,
        "missing": sorted(missing),
        "detected_at": text,
    }
    report = parse_or_refuse(json.dumps(body))
    assert report is not None, body
    assert report.subject.application == application
    assert report.subject.office == office
    assert report.subject.vehicle == vehicle
    assert report.missing == frozenset(CertificateKind(k) for k in missing)
    assert report.detected_at == detected_at
