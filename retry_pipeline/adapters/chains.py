"""The retry table (R4, R5) over SQL: one write path for one chain or a slot's batch."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import one_of
from retry_pipeline.adapters.orm import ChainRow
from retry_pipeline.calendar import to_local
from retry_pipeline.errors import DuplicateRecord
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    Cursor,
    Dispatch,
    Phase,
    Procedure,
    sorted_kinds,
)

IN_CHUNK = 500  # ids per IN (...) list


def _kinds(values: Iterable[str]) -> frozenset[CertificateKind]:
    return _kinds_of(tuple(values))


@functools.lru_cache(maxsize=64)  # a handful of combinations of three kinds
def _kinds_of(values: tuple[str, ...]) -> frozenset[CertificateKind]:
    return frozenset(CertificateKind(v) for v in values)  # ValueError on an unknown kind


_TABLE = ChainRow.__table__
_C = _TABLE.c


def to_chain(row: Any) -> Chain:
    """The core's view of a retry-table row (an ORM object or a plain row)."""
    subject = Application(
        application=row.application,
        office=row.office,
        procedure=Procedure(row.procedure),
        vehicle=row.vehicle,
        insurer_id=row.insurer_id,
        insurance_no=row.insurance_no,
    )
    return Chain(
        chain_id=row.chain_id,
        subject=subject,
        missing=_kinds(row.missing),
        found=_kinds(row.found),
        confirmed=_kinds(row.confirmed),
        detected_at=row.detected_at,
        attempts_made=row.attempts_made,
        cursor=Cursor(Phase(row.phase), row.phase_used, to_local(row.next_slot)),
        version=row.version,
        dispatched_for=row.dispatched_for,
    )


def _state(chain: Chain, now: datetime) -> dict[str, Any]:
    """The columns a chain's progress changes."""
    return {
        "chain_id": chain.chain_id,
        "missing": sorted_kinds(chain.missing),
        "found": sorted_kinds(chain.found),
        "confirmed": sorted_kinds(chain.confirmed),
        "attempts_made": chain.attempts_made,
        "phase": chain.cursor.phase.value,
        "phase_used": chain.cursor.used,
        "next_slot": chain.cursor.slot,
        "dispatched_for": chain.dispatched_for,
        "version": chain.version,
        "updated_at": now,
    }


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield list(ids[start : start + IN_CHUNK])


class SqlChains:
    """``u.chains``: the live records, inside the unit's transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._locking = session.get_bind().dialect.name != "sqlite"

    def _rows(self, stmt: Any, *, lock: bool = False, skip_locked: bool = False) -> list[Chain]:
        """Chains from ``stmt`` over ``_TABLE``: plain rows (no ORM objects to build and
        track: a slot claims thousands, and the writes are set-based statements), always
        as the database has them now."""
        if lock and self._locking:  # SQLite: the transaction already holds the write lock
            stmt = stmt.with_for_update(skip_locked=skip_locked)
        return [to_chain(r) for r in self.session.execute(stmt)]

    def get(self, chain_id: str) -> Chain | None:
        found = self._rows(select(_TABLE).where(_C.chain_id == chain_id))
        return found[0] if found else None

    def of_applications(self, applications: Sequence[str], *, lock: bool) -> dict[str, Chain]:
        out: dict[str, Chain] = {}
        for part in _chunks(sorted(set(applications))):  # sorted: locks in one order
            stmt = select(_TABLE).where(one_of(self.session, _C.application, part))
            if lock:  # LockRows above the sort: rows locked in this order whatever the plan
                stmt = stmt.order_by(_C.application)
            out.update((c.subject.application, c) for c in self._rows(stmt, lock=lock))
        return out

    def of_office(self, office: str | None, application: str | None = None) -> list[Chain]:
        stmt = select(_TABLE)
        if office is not None:
            stmt = stmt.where(_C.office == office)
        if application is not None:
            stmt = stmt.where(_C.application == application)
        return self._rows(stmt.order_by(_C.detected_at, _C.chain_id))

    def due(self, now: datetime, limit: int) -> list[Chain]:
        stmt = (
            select(_TABLE)
            .where(_C.next_slot <= now)
            .order_by(_C.next_slot, _C.chain_id)
            .limit(limit)
        )
        return self._rows(stmt)

    def slotted_between(self, start: datetime, end: datetime) -> list[Chain]:
        # SKIP LOCKED: a row another session holds (a running batch, a stuck transaction)
        # is parked by the next tick instead of stalling this one (issue 12).
        stmt = select(_TABLE).where(_C.next_slot >= start, _C.next_slot < end)
        return self._rows(stmt.order_by(_C.next_slot, _C.chain_id), lock=True, skip_locked=True)

    def claim(self, slot: datetime, limit: int) -> list[Chain]:
        # No ORDER BY: the next_slot index hands out the rest without a sort. SKIP LOCKED:
        # parallel batches of one slot split the work instead of waiting for each other.
        stmt = select(_TABLE).where(_C.next_slot == slot).limit(limit)
        return self._rows(stmt, lock=True, skip_locked=True)

    def waiting(self, slot: datetime) -> int:
        stmt = select(func.count()).select_from(ChainRow).where(ChainRow.next_slot == slot)
        return int(self.session.scalar(stmt) or 0)

    def insert(self, chains: Sequence[Chain], now: datetime) -> None:
        if not chains:
            return
        rows = []
        for chain in chains:
            s = chain.subject
            row = _state(chain, now)
            row.update(
                application=s.application, office=s.office, procedure=s.procedure.value,
                vehicle=s.vehicle, insurer_id=s.insurer_id, insurance_no=s.insurance_no,
                detected_at=chain.detected_at, created_at=now,
            )  # fmt: skip
            rows.append(row)
        try:
            with self.session.begin_nested():
                self.session.execute(insert(ChainRow), rows)
        except IntegrityError as exc:
            raise DuplicateRecord("another report created one of these records first") from exc

    def save(self, chains: Sequence[Chain], now: datetime) -> None:
        # Set-based: one UPDATE per distinct new state (a slot's chains that are still
        # missing the same certificates mostly share one), not one per row.
        same: dict[tuple[Any, ...], tuple[dict[str, Any], list[str]]] = {}
        for chain in chains:
            state = _state(chain, now)
            chain_id = state.pop("chain_id")
            key = tuple(tuple(v) if isinstance(v, list) else v for v in state.values())
            same.setdefault(key, (state, []))[1].append(chain_id)
        for state, ids in same.values():
            for part in _chunks(ids):
                self.session.execute(
                    update(ChainRow)
                    .where(one_of(self.session, ChainRow.chain_id, part))
                    .values(state)
                    .execution_options(synchronize_session=False)
                )

    def mark_dispatched(self, chain_ids: Sequence[str], slot: datetime) -> None:
        for part in _chunks(chain_ids):
            ids: Any = part
            if self._locking:  # a row another session holds stays unmarked: sent again
                ids = (
                    select(ChainRow.chain_id)
                    .where(one_of(self.session, ChainRow.chain_id, part))
                    .with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
            self.session.execute(
                update(ChainRow)
                .where(ChainRow.chain_id.in_(ids), ChainRow.next_slot == slot)
                .values(dispatched_for=slot)
                .execution_options(synchronize_session=False)
            )

    def dispatch_due(self, now: datetime, overdue_before: datetime) -> list[Dispatch]:
        # One UPDATE ... RETURNING: the tick never loads the due chains themselves. Rows
        # another transaction holds are skipped (SKIP LOCKED): a stuck row never stalls it.
        due = select(ChainRow.chain_id).where(
            ChainRow.next_slot <= now,
            or_(
                ChainRow.dispatched_for.is_(None),
                ChainRow.dispatched_for != ChainRow.next_slot,
                ChainRow.next_slot <= overdue_before,
            ),
        )
        if self._locking:
            due = due.with_for_update(skip_locked=True)
        stmt = (
            update(ChainRow)
            .where(ChainRow.chain_id.in_(due.scalar_subquery()))
            .values(dispatched_for=ChainRow.next_slot)
            .returning(ChainRow.chain_id, ChainRow.attempts_made, ChainRow.next_slot)
            .execution_options(synchronize_session=False)
        )
        # Sorted as the database's UTC datetimes (compared in C), not as the Japan-time
        # instants the Dispatches carry: a release's ten thousand rows share one slot, and
        # tie-breaking on equal pendulum instants cost more than the UPDATE itself.
        rows = sorted(self.session.execute(stmt), key=operator.itemgetter(2, 0))
        return [Dispatch(chain_id, made + 1, to_local(slot)) for chain_id, made, slot in rows]

    def delete(self, chain_ids: Sequence[str]) -> None:
        for part in _chunks(chain_ids):
            self.session.execute(
                delete(ChainRow)
                .where(one_of(self.session, ChainRow.chain_id, part))
                .execution_options(synchronize_session=False)
            )
