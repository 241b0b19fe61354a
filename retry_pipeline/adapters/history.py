"""The append-only history (R5) over SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import insert_many
from retry_pipeline.adapters.orm import HistoryRow
from retry_pipeline.model import CertificateKind, Event, HistoryEntry

IN_CHUNK = 500
DECISIONS = (Event.RESUMED.value, Event.AUTO_CORRECTED.value)
ENTRY_FIELDS = tuple(f.name for f in fields(HistoryEntry))


def to_entry(row: HistoryRow) -> HistoryEntry:
    """The core's view of a history row."""
    return HistoryEntry(
        chain_id=row.chain_id,
        application=row.application,
        event=row.event,
        attempt_no=row.attempt_no,
        slot=row.slot,
        missing=tuple(row.missing),
        detail=row.detail,
        recorded_at=row.recorded_at,
        office=row.office,
        found=tuple(row.found or ()),
        late_s=row.late_s,
    )


class SqlHistory:
    """``u.history``: lines are only ever added."""

    def __init__(self, session: Session, node: str | None = None) -> None:
        self.session = session
        self.node = node  # who writes these lines (``HistoryRow.node``)

    def append(self, entries: Sequence[HistoryEntry]) -> None:
        if entries:
            rows = [
                {
                    **{name: getattr(e, name) for name in ENTRY_FIELDS},  # (asdict deep-copies)
                    "missing": list(e.missing), "found": list(e.found),
                }
                for e in entries
            ]  # fmt: skip
            insert_many(self.session, HistoryRow, rows, same={"node": self.node})

    def lines(
        self, *, application: str | None = None, office: str | None = None
    ) -> list[HistoryEntry]:
        stmt = select(HistoryRow)
        if application is not None:
            stmt = stmt.where(HistoryRow.application == application)
        if office is not None:
            stmt = stmt.where(HistoryRow.office == office)
        return [to_entry(r) for r in self.session.scalars(stmt.order_by(HistoryRow.id))]

    def last_decisions(self, applications: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        out: dict[str, tuple[str, datetime]] = {}
        unique = sorted(set(applications))
        for start in range(0, len(unique), IN_CHUNK):
            stmt = (
                select(HistoryRow.application, HistoryRow.chain_id, HistoryRow.slot)
                .where(
                    HistoryRow.application.in_(unique[start : start + IN_CHUNK]),
                    HistoryRow.event.in_(DECISIONS),
                    HistoryRow.slot.is_not(None),
                )
                .order_by(HistoryRow.slot, HistoryRow.id)
            )
            for application, chain_id, slot in self.session.execute(stmt):
                if slot is not None:
                    out[application] = (chain_id, slot)  # the latest wins
        return out

    def found_present(self, applications: Sequence[str]) -> dict[str, frozenset[CertificateKind]]:
        out: dict[str, set[CertificateKind]] = {}
        unique = sorted(set(applications))
        for start in range(0, len(unique), IN_CHUNK):
            stmt = select(HistoryRow.application, HistoryRow.found).where(
                HistoryRow.application.in_(unique[start : start + IN_CHUNK])
            )
            for application, found in self.session.execute(stmt):
                if found:
                    out.setdefault(application, set()).update(CertificateKind(k) for k in found)
        return {application: frozenset(kinds) for application, kinds in out.items()}
