"""The two interfaces the core depends on (DESIGN 6)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from retry_pipeline.model import Application, CertificateKind


class CertificateRegistry(Protocol):
    """Reads Kei-MOTAS (軽ＭＯＴＡＳ): which certificates an application has (R1, R2)."""

    def present(
        self, subject: Application, kinds: frozenset[CertificateKind], as_of: datetime
    ) -> frozenset[CertificateKind]:
        """Which of ``kinds`` are present for ``subject`` as of the instant ``as_of``."""
        ...

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        """``present`` for many applications at one instant (one slot's batch)."""
        ...
