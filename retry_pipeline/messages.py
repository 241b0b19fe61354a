"""The message contract of ``retry_pipeline.report_missing``, validated with pydantic."""

from __future__ import annotations

import json
import unicodedata
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from retry_pipeline.calendar import parse_instant
from retry_pipeline.errors import InvalidInstant, InvalidReport
from retry_pipeline.model import Application, CertificateKind, Procedure, Report

MAX_PAYLOAD_BYTES = 16_384  # a report is a few hundred bytes; more is not a report

PRINTABLE_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F))


def _nfkc(value: Any) -> Any:
    """Compatibility forms fold to their plain letters first (ＯＳＳ-１ → OSS-1)."""
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


def _ascii(value: str) -> str:
    """Ids are printable ASCII after NFKC: a look-alike (Cyrillic О for O) is another id."""
    for position, char in enumerate(value):
        if char not in PRINTABLE_ASCII:
            name = unicodedata.name(char, "unnamed")
            raise ValueError(
                f"ids are printable ASCII after NFKC normalization; {char!r} "
                f"(U+{ord(char):04X} {name}) at position {position} is not"
            )
    return value


_IDENT_PATTERN = r"^[\w.:/-]+$"
Ident = Annotated[
    str,
    BeforeValidator(_nfkc),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_IDENT_PATTERN),
    AfterValidator(_ascii),
]
OfficeCode = Annotated[
    str,
    BeforeValidator(_nfkc),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=32, pattern=_IDENT_PATTERN),
    AfterValidator(_ascii),
]


class ReportMessage(BaseModel):
    """One missing-certificate report from the pre-review (前審査)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    application: Ident
    office: OfficeCode
    procedure: Procedure
    vehicle: Ident
    missing: Annotated[list[CertificateKind], Field(min_length=1, max_length=3)]
    confirmed: Annotated[list[CertificateKind], Field(max_length=3)] = []
    detected_at: AwareDatetime
    insurer_id: Ident | None = None
    insurance_no: Ident | None = None

    @field_validator("detected_at", mode="before")
    @classmethod
    def _iso_text(cls, value: Any) -> Any:
        # The contract is ISO 8601 text with an offset; pydantic would take epoch numbers.
        if not isinstance(value, str):
            raise ValueError(
                "must be ISO 8601 text with a UTC offset, e.g. 2026-11-27T08:36:00+09:00"
            )
        return value

    @field_validator("detected_at", mode="after")
    @classmethod
    def _in_calendar(cls, value: AwareDatetime) -> AwareDatetime:
        # Only instants the business calendar can handle (its years, Japan time).
        try:
            parse_instant(value.isoformat())
        except InvalidInstant as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _insurance_key(self) -> ReportMessage:
        given = self.insurer_id is not None, self.insurance_no is not None
        if self.procedure is Procedure.NEW and not all(given):
            raise ValueError("new inspection needs insurer_id and insurance_no (R1.4)")
        if self.procedure is Procedure.CONTINUOUS and any(given):
            raise ValueError(
                "continuous inspection reads insurer_id/insurance_no off the safety "
                "certificate (R1.2); do not send them"
            )
        return self

    def to_report(self) -> Report:
        """The domain report."""
        return Report(
            subject=Application(
                application=self.application,
                office=self.office,
                procedure=self.procedure,
                vehicle=self.vehicle,
                insurer_id=self.insurer_id,
                insurance_no=self.insurance_no,
            ),
            missing=frozenset(self.missing),
            confirmed=frozenset(self.confirmed),
            detected_at=self.detected_at,
        )


def parse_report(payload: Any) -> Report:
    """Validate a message (a dict, or JSON text) into a Report, or raise InvalidReport."""
    if isinstance(payload, str | bytes):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidReport(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidReport(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidReport(f"a report is a JSON object, got {type(payload).__name__}")
    size = len(json.dumps(payload, default=str))
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidReport(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        return ReportMessage.model_validate(payload).to_report()
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidReport(reasons) from None
