"""The scenario file of ``retry-pipeline simulate`` (validated with pydantic)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from retry_pipeline.errors import RetryPipelineError
from retry_pipeline.messages import ReportMessage
from retry_pipeline.model import (
    Certificate,
    CompletionCertificate,
    InsuranceCertificate,
    SafetyCertificate,
)


class ScenarioError(RetryPipelineError):
    """The scenario file breaks its contract."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioConfig(_Strict):
    """Settings the scenario runs under (others keep their defaults)."""

    new_inspection_retry_from: date | None = None


class _CertBase(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    vehicle: Annotated[str, Field(min_length=1, max_length=64)]
    available_at: AwareDatetime  # when it reaches Kei-MOTAS
    deleted_at: AwareDatetime | None = None


class SafetySpec(_CertBase):
    kind: Literal["safety"]
    inspected_on: date
    insurer_id: str
    insurance_no: str
    used_by: str | None = None

    def to_model(self) -> SafetyCertificate:
        return SafetyCertificate(
            id=self.id,
            vehicle=self.vehicle,
            inspected_on=self.inspected_on,
            insurer_id=self.insurer_id,
            insurance_no=self.insurance_no,
            available_at=self.available_at,
            used_by=self.used_by,
            deleted_at=self.deleted_at,
        )


class InsuranceSpec(_CertBase):
    kind: Literal["insurance"]
    insurer_id: str
    insurance_no: str

    def to_model(self) -> InsuranceCertificate:
        return InsuranceCertificate(
            id=self.id,
            insurer_id=self.insurer_id,
            insurance_no=self.insurance_no,
            vehicle=self.vehicle,
            available_at=self.available_at,
            deleted_at=self.deleted_at,
        )


class CompletionSpec(_CertBase):
    kind: Literal["completion"]
    issued_on: date
    used_by: str | None = None

    def to_model(self) -> CompletionCertificate:
        return CompletionCertificate(
            id=self.id,
            vehicle=self.vehicle,
            issued_on=self.issued_on,
            available_at=self.available_at,
            used_by=self.used_by,
            deleted_at=self.deleted_at,
        )


CertificateSpec = Annotated[
    SafetySpec | InsuranceSpec | CompletionSpec, Field(discriminator="kind")
]


class Scenario(_Strict):
    """Config, close signals, certificates and reports of one simulated run."""

    config: ScenarioConfig = ScenarioConfig()
    close_signals: list[AwareDatetime] = []
    certificates: list[CertificateSpec] = []
    reports: Annotated[list[dict[str, Any]], Field(min_length=1)]

    def certificate_models(self) -> list[Certificate]:
        """The certificates as domain objects."""
        return [c.to_model() for c in self.certificates]

    def report_messages(self) -> list[ReportMessage]:
        """Reports validated now, so a broken scenario fails before anything starts."""
        return [ReportMessage.model_validate(r) for r in self.reports]


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; errors name the offending field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ScenarioError(f"{path} is not JSON: {exc}") from None
    try:
        scenario = Scenario.model_validate(data)
        scenario.report_messages()
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ScenarioError(f"{path}: {reasons}") from None
    return scenario
