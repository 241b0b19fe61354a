"""Kei-MOTAS certificate registry over SQL tables (DESIGN 6); rules from ``rules.py``.

Kei-MOTAS is another system: the registry only reads the tables (or views) named in
docs/registry.md, from ``RETRY_PIPELINE_REGISTRY_URL``. A read that fails raises
``RegistryUnavailable``; no attempt is decided on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_sessions, one_of
from retry_pipeline.adapters.orm import CompletionRow, InsuranceRow, SafetyRow
from retry_pipeline.config import Settings
from retry_pipeline.errors import RegistryUnavailable
from retry_pipeline.model import (
    Application,
    Certificate,
    CertificateKind,
    CompletionCertificate,
    InsuranceCertificate,
    Procedure,
    SafetyCertificate,
)
from retry_pipeline.rules import CertificateSet, insurance_key, judge_presence, valid_safety

T = TypeVar("T")
C = TypeVar("C", SafetyCertificate, CompletionCertificate)


class SqlCertificateRegistry:
    """Answers "which certificates are present as of T" from the Kei-MOTAS tables."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._sessions = make_sessions(engine)
        self.settings = settings

    def present(
        self, subject: Application, kinds: frozenset[CertificateKind], as_of: datetime
    ) -> frozenset[CertificateKind]:
        """R1/R2: which of ``kinds`` are present for ``subject`` at ``as_of``."""
        with _reading(), self._sessions() as session:
            return self.present_in(session, subject, kinds, as_of)

    def present_in(
        self,
        session: Session,
        subject: Application,
        kinds: frozenset[CertificateKind],
        as_of: datetime,
    ) -> frozenset[CertificateKind]:
        """As ``present``, inside the caller's transaction."""
        certs = self._load(session, subject, kinds, as_of)
        return judge_presence(subject, kinds, as_of, certs, self.settings)

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        """``present`` for many applications at one instant, in a few queries (a slot's batch)."""
        vehicles = sorted({subject.vehicle for subject, _ in requests})
        with _reading(), self._sessions() as session:
            safety = _by_vehicle(
                _safety(r)
                for part in _chunks(vehicles)
                for r in session.scalars(
                    select(SafetyRow).where(
                        one_of(session, SafetyRow.vehicle, part), SafetyRow.available_at <= as_of
                    )
                )
            )
            completion = _by_vehicle(
                _completion(r)
                for part in _chunks(vehicles)
                for r in session.scalars(
                    select(CompletionRow).where(
                        one_of(session, CompletionRow.vehicle, part),
                        CompletionRow.available_at <= as_of,
                    )
                )
            )
            keys = {}
            for subject, _kinds in requests:
                chosen = valid_safety(
                    safety.get(subject.vehicle, ()), subject.application, as_of, self.settings
                )
                keys[subject.application] = insurance_key(subject, chosen)
            wanted = sorted({k for k in keys.values() if k is not None})
            insurance: dict[tuple[str, str], list[InsuranceCertificate]] = {}
            for part in _chunks(wanted):
                rows = session.scalars(
                    select(InsuranceRow).where(
                        tuple_(InsuranceRow.insurer_id, InsuranceRow.insurance_no).in_(part),
                        InsuranceRow.available_at <= as_of,
                    )
                )
                for r in rows:
                    insurance.setdefault((r.insurer_id, r.insurance_no), []).append(_insurance(r))
        out = []
        for subject, kinds in requests:
            key = keys[subject.application]
            certs = CertificateSet(
                safety=tuple(safety.get(subject.vehicle, ())),
                insurance=tuple(insurance.get(key, ())) if key else (),
                completion=tuple(completion.get(subject.vehicle, ())),
            )
            out.append(judge_presence(subject, kinds, as_of, certs, self.settings))
        return out

    def _load(
        self,
        session: Session,
        subject: Application,
        kinds: frozenset[CertificateKind],
        as_of: datetime,
    ) -> CertificateSet:
        safety: tuple[SafetyCertificate, ...] = ()
        completion: tuple[CompletionCertificate, ...] = ()
        insurance: tuple[InsuranceCertificate, ...] = ()
        continuous = subject.procedure is Procedure.CONTINUOUS
        # The insurance key of a continuous inspection is on its safety certificate.
        if CertificateKind.SAFETY in kinds or (continuous and CertificateKind.INSURANCE in kinds):
            rows = session.scalars(
                select(SafetyRow).where(
                    SafetyRow.vehicle == subject.vehicle, SafetyRow.available_at <= as_of
                )
            )
            safety = tuple(_safety(r) for r in rows)
        if CertificateKind.COMPLETION in kinds:
            rows_c = session.scalars(
                select(CompletionRow).where(
                    CompletionRow.vehicle == subject.vehicle, CompletionRow.available_at <= as_of
                )
            )
            completion = tuple(_completion(r) for r in rows_c)
        if CertificateKind.INSURANCE in kinds:
            chosen = valid_safety(safety, subject.application, as_of, self.settings)
            key = insurance_key(subject, chosen)
            if key is not None:
                rows_i = session.scalars(
                    select(InsuranceRow).where(
                        InsuranceRow.insurer_id == key[0],
                        InsuranceRow.insurance_no == key[1],
                        InsuranceRow.available_at <= as_of,
                    )
                )
                insurance = tuple(_insurance(r) for r in rows_i)
        return CertificateSet(safety=safety, insurance=insurance, completion=completion)


CHUNK = 500  # parameters per IN (...) list


@contextmanager
def _reading() -> Iterator[None]:
    """A failed read of Kei-MOTAS (connection, timeout, missing view) is one error type."""
    try:
        yield
    except DBAPIError as exc:
        raise RegistryUnavailable(
            f"Kei-MOTAS registry unreadable: {type(exc.orig).__name__}: {str(exc.orig)[:200]}"
        ) from exc


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _by_vehicle(certs: Iterable[C]) -> dict[str, list[C]]:
    out: dict[str, list[C]] = {}
    for cert in certs:
        out.setdefault(cert.vehicle, []).append(cert)
    return out


def _safety(r: SafetyRow) -> SafetyCertificate:
    return SafetyCertificate(
        id=r.id,
        vehicle=r.vehicle,
        inspected_on=r.inspected_on,
        insurer_id=r.insurer_id,
        insurance_no=r.insurance_no,
        available_at=r.available_at,
        used_by=r.used_by,
        deleted_at=r.deleted_at,
    )


def _completion(r: CompletionRow) -> CompletionCertificate:
    return CompletionCertificate(
        id=r.id,
        vehicle=r.vehicle,
        issued_on=r.issued_on,
        available_at=r.available_at,
        used_by=r.used_by,
        deleted_at=r.deleted_at,
    )


def _insurance(r: InsuranceRow) -> InsuranceCertificate:
    return InsuranceCertificate(
        id=r.id,
        insurer_id=r.insurer_id,
        insurance_no=r.insurance_no,
        vehicle=r.vehicle,
        available_at=r.available_at,
        deleted_at=r.deleted_at,
    )


def to_row(cert: Certificate) -> SafetyRow | InsuranceRow | CompletionRow:
    """The Kei-MOTAS row for a certificate (the linkage simulator writes these)."""
    if isinstance(cert, SafetyCertificate):
        return SafetyRow(
            id=cert.id,
            vehicle=cert.vehicle,
            inspected_on=cert.inspected_on,
            insurer_id=cert.insurer_id,
            insurance_no=cert.insurance_no,
            used_by=cert.used_by,
            deleted_at=cert.deleted_at,
            available_at=cert.available_at,
        )
    if isinstance(cert, InsuranceCertificate):
        return InsuranceRow(
            id=cert.id,
            insurer_id=cert.insurer_id,
            insurance_no=cert.insurance_no,
            vehicle=cert.vehicle,
            deleted_at=cert.deleted_at,
            available_at=cert.available_at,
        )
    return CompletionRow(
        id=cert.id,
        vehicle=cert.vehicle,
        issued_on=cert.issued_on,
        used_by=cert.used_by,
        deleted_at=cert.deleted_at,
        available_at=cert.available_at,
    )
