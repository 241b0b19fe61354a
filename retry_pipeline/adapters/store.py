"""The retry table's store (R4, R5): every change of a chain in one SQL transaction.

``RetryStore.unit()`` opens a unit of work; its ``StoreUnit`` methods read and
write chains, history and outbox inside that one transaction, which commits when
the block ends and rolls back entirely when it raises (DESIGN 1, 3, 5).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime

from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.adapters.orm import (
    ChainRow,
    CloseSignalRow,
    DeadLetterRow,
    HistoryRow,
)
from retry_pipeline.adapters.outbox import (
    OutboxUnit,
    PendingOutcome,
    outbox_row,
    pending_outcome,
)
from retry_pipeline.calendar import to_local
from retry_pipeline.errors import StoreError
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    HistoryEntry,
    Outcome,
    Procedure,
    Report,
    sorted_kinds,
)
from retry_pipeline.policy import Cursor, Phase


class Event:
    """History event names (R5)."""

    REPORTED = "reported"
    MERGED = "merged"
    ATTEMPT = "attempt"
    PARKED = "parked"
    RESUMED = Outcome.RESUMED.value
    AUTO_CORRECTED = Outcome.AUTO_CORRECTED.value
    DUPLICATE = "duplicate"  # a report that came again after its chain was decided


@dataclass(frozen=True)
class Recorded:
    """Result of recording a report: the chain, and whether this report created it."""

    chain: Chain
    created: bool
    added: frozenset[CertificateKind]  # R4: certificates a merge added to the record


@dataclass(frozen=True)
class DeadLetter:
    """A refused message (issue: bad input is refused, never lost)."""

    id: int
    task: str
    reason: str
    payload: str
    received_at: datetime


def _kinds(values: Iterable[str]) -> frozenset[CertificateKind]:
    return frozenset(CertificateKind(v) for v in values)


def to_chain(row: ChainRow) -> Chain:
    """The core's view of a retry-table row."""
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


class StoreUnit(OutboxUnit):
    """One transaction over the retry table, its history and outbox."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.on_commit: list[Callable[[], None]] = []

    # -- reading -----------------------------------------------------------------
    def get_chain(self, chain_id: str, *, lock: bool = False) -> Chain | None:
        """The live chain ``chain_id``; ``lock`` holds its row until commit (PostgreSQL)."""
        stmt = select(ChainRow).where(ChainRow.chain_id == chain_id)
        stmt = stmt.execution_options(populate_existing=True)  # after our own UPDATEs
        row = self.session.scalars(stmt.with_for_update() if lock else stmt).first()
        return None if row is None else to_chain(row)

    def find_chain(self, application: str, *, lock: bool = False) -> Chain | None:
        """The live chain of ``application``, if any (R4: at most one)."""
        stmt = select(ChainRow).where(ChainRow.application == application)
        stmt = stmt.execution_options(populate_existing=True)
        row = self.session.scalars(stmt.with_for_update() if lock else stmt).first()
        return None if row is None else to_chain(row)

    def chains_of_office(self, office: str, application: str | None = None) -> list[Chain]:
        """R15: the live chains of one office (optionally one application of it)."""
        stmt = select(ChainRow).where(ChainRow.office == office)
        if application is not None:
            stmt = stmt.where(ChainRow.application == application)
        return [to_chain(r) for r in self.session.scalars(stmt.order_by(ChainRow.detected_at))]

    def due_chains(self, now: datetime, limit: int = 1000) -> list[Chain]:
        """Chains whose next attempt's slot is at or before ``now``, oldest first."""
        stmt = (
            select(ChainRow)
            .where(ChainRow.next_slot <= now)
            .order_by(ChainRow.next_slot, ChainRow.chain_id)
            .limit(limit)
        )
        return [to_chain(r) for r in self.session.scalars(stmt)]

    def chains_slotted_between(self, start: datetime, end: datetime) -> list[Chain]:
        """Chains whose next slot lies in [start, end) (R10: what a close must park)."""
        stmt = select(ChainRow).where(ChainRow.next_slot >= start, ChainRow.next_slot < end)
        return [to_chain(r) for r in self.session.scalars(stmt.order_by(ChainRow.next_slot))]

    def live_chains(self) -> list[Chain]:
        """Every live chain (R10 parks them all at the close)."""
        return [to_chain(r) for r in self.session.scalars(select(ChainRow))]

    def count_live(self) -> int:
        """How many chains are live."""
        return int(self.session.scalar(select(func.count()).select_from(ChainRow)) or 0)

    def last_ending(self, application: str) -> tuple[str, datetime] | None:
        """(chain id, decided at) of the application's latest decided chain, if any."""
        stmt = (
            select(HistoryRow.chain_id, HistoryRow.slot)
            .where(
                HistoryRow.application == application,
                HistoryRow.event.in_([Event.RESUMED, Event.AUTO_CORRECTED]),
                HistoryRow.slot.is_not(None),
            )
            .order_by(HistoryRow.slot.desc())
            .limit(1)
        )
        row = self.session.execute(stmt).first()
        if row is None or row[1] is None:
            return None
        return (row[0], row[1])

    def count_reports_processed(self) -> int:
        """Reports handled so far: each leaves one history line or one dead letter."""
        by_report = or_(
            HistoryRow.event.in_([Event.REPORTED, Event.MERGED, Event.DUPLICATE]),
            (HistoryRow.event == Event.AUTO_CORRECTED) & HistoryRow.attempt_no.is_(None),
        )
        lines = self.session.scalar(select(func.count()).select_from(HistoryRow).where(by_report))
        letters = self.session.scalar(
            select(func.count())
            .select_from(DeadLetterRow)
            .where(DeadLetterRow.task == "retry_pipeline.report_missing")
        )
        return int(lines or 0) + int(letters or 0)

    def earliest_slot(self) -> datetime | None:
        """The soonest next attempt of any live chain."""
        return self.session.scalar(select(func.min(ChainRow.next_slot)))

    def history(
        self, *, application: str | None = None, office: str | None = None
    ) -> list[HistoryEntry]:
        """The append-only history (R5), oldest first."""
        stmt = select(HistoryRow)
        if application is not None:
            stmt = stmt.where(HistoryRow.application == application)
        if office is not None:
            stmt = stmt.where(HistoryRow.office == office)
        return [
            HistoryEntry(
                chain_id=r.chain_id,
                application=r.application,
                event=r.event,
                attempt_no=r.attempt_no,
                slot=r.slot,
                missing=tuple(r.missing),
                detail=r.detail,
                recorded_at=r.recorded_at,
            )
            for r in self.session.scalars(stmt.order_by(HistoryRow.id))
        ]

    # -- writing -----------------------------------------------------------------
    def record_report(
        self,
        report: Report,
        cursor: Cursor,
        now: datetime,
        *,
        known_new: bool = False,
        dispatched_for: datetime | None = None,
    ) -> Recorded:
        """R4: insert the application's record, or merge into its live one.

        ``known_new``: the caller found no live record in this transaction already.
        ``dispatched_for``: the slot whose attempt message the caller sends on commit.
        """
        existing = None if known_new else self.find_chain(report.subject.application, lock=True)
        if existing is None:
            try:
                with self.session.begin_nested():
                    return self._insert(report, cursor, now, dispatched_for)
            except IntegrityError:
                # A concurrent report inserted it first: merge into that one.
                existing = self.find_chain(report.subject.application, lock=True)
                if existing is None:
                    raise
        return self.merge_report(existing, report, now)

    def _insert(
        self, report: Report, cursor: Cursor, now: datetime, dispatched_for: datetime | None
    ) -> Recorded:
        s = report.subject
        row = ChainRow(
            chain_id=uuid.uuid4().hex,
            application=s.application,
            office=s.office,
            procedure=s.procedure.value,
            vehicle=s.vehicle,
            insurer_id=s.insurer_id,
            insurance_no=s.insurance_no,
            missing=sorted_kinds(report.missing),
            found=[],
            confirmed=sorted_kinds(report.confirmed),
            detected_at=report.detected_at,
            attempts_made=0,
            phase=cursor.phase.value,
            phase_used=cursor.used,
            next_slot=cursor.slot,
            dispatched_for=dispatched_for,
            version=1,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        self.session.flush()
        chain = to_chain(row)
        detail = "parked (R12)" if cursor.parked else f"phase {cursor.phase.value}"
        self._log(chain, Event.REPORTED, None, cursor.slot, report.missing, detail, now)
        return Recorded(chain, True, report.missing)

    def merge_report(self, chain: Chain, report: Report, now: datetime) -> Recorded:
        """R4: add a report's certificates to the live ``chain`` (read in this unit)."""
        added = report.missing - chain.missing
        missing = chain.missing | report.missing
        confirmed = chain.confirmed | report.confirmed
        self._update(
            chain,
            now,
            missing=sorted_kinds(missing),
            confirmed=sorted_kinds(confirmed),
        )
        merged = self.get_chain(chain.chain_id)
        assert merged is not None
        detail = "added " + (", ".join(sorted_kinds(added)) or "nothing")
        self._log(merged, Event.MERGED, None, None, report.missing, detail, now)
        return Recorded(merged, False, added)

    def claim_attempt(
        self,
        chain_id: str,
        attempt_no: int,
        slot: datetime,
        now: datetime,
        *,
        version: int | None = None,
    ) -> Chain | None:
        """Claim attempt ``attempt_no`` at ``slot`` only if it is the one the chain expects.

        A conditional update: a duplicate, stale or late message matches no row and
        gets None. The claim is undone with the transaction if the attempt fails.
        With ``version``, the chain must also be unchanged since it was read.
        """
        conditions = [
            ChainRow.chain_id == chain_id,
            ChainRow.attempts_made == attempt_no - 1,
            ChainRow.next_slot == slot,
        ]
        if version is not None:
            conditions.append(ChainRow.version == version)
        result = self.session.execute(
            update(ChainRow)
            .where(*conditions)
            .values(attempts_made=attempt_no, version=ChainRow.version + 1, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return self.get_chain(chain_id, lock=True)

    def live_applications(self, applications: Sequence[str]) -> set[str]:
        """Which of these applications have a live record (R4), in one query."""
        found: set[str] = set()
        for start in range(0, len(applications), 500):
            part = list(applications[start : start + 500])
            found.update(
                self.session.scalars(
                    select(ChainRow.application).where(ChainRow.application.in_(part))
                )
            )
        return found

    def last_decisions(self, applications: Sequence[str]) -> dict[str, datetime]:
        """When each of these applications was last decided, if ever, in one query."""
        out: dict[str, datetime] = {}
        for start in range(0, len(applications), 500):
            part = list(applications[start : start + 500])
            stmt = (
                select(HistoryRow.application, func.max(HistoryRow.slot))
                .where(
                    HistoryRow.application.in_(part),
                    HistoryRow.event.in_([Event.RESUMED, Event.AUTO_CORRECTED]),
                )
                .group_by(HistoryRow.application)
            )
            out.update({app: at for app, at in self.session.execute(stmt) if at is not None})
        return out

    def insert_reports(
        self, items: Sequence[tuple[Report, Cursor, datetime | None]], now: datetime
    ) -> list[str] | None:
        """New records for reports of applications known to have none (bulk; R4, R5).

        None, with nothing written, when another transaction inserted one meanwhile.
        """
        chains = []
        for report, cursor, dispatched_for in items:
            s = report.subject
            chains.append({
                "chain_id": uuid.uuid4().hex, "application": s.application, "office": s.office,
                "procedure": s.procedure.value, "vehicle": s.vehicle, "insurer_id": s.insurer_id,
                "insurance_no": s.insurance_no, "missing": sorted_kinds(report.missing),
                "found": [], "confirmed": sorted_kinds(report.confirmed),
                "detected_at": report.detected_at, "attempts_made": 0,
                "phase": cursor.phase.value, "phase_used": cursor.used, "next_slot": cursor.slot,
                "dispatched_for": dispatched_for, "version": 1, "created_at": now,
                "updated_at": now,
            })  # fmt: skip
        if not chains:
            return []
        try:
            with self.session.begin_nested():
                self.session.execute(insert(ChainRow), chains)
        except IntegrityError:
            return None  # a concurrent report created one of them: the caller goes one by one
        self.session.execute(
            insert(HistoryRow),
            [
                {
                    "chain_id": row["chain_id"], "application": row["application"],
                    "office": row["office"], "event": Event.REPORTED, "attempt_no": None,
                    "slot": cursor.slot, "missing": row["missing"], "recorded_at": now,
                    "detail": "parked (R12)" if cursor.parked else f"phase {cursor.phase.value}",
                }
                for row, (_report, cursor, _d) in zip(chains, items, strict=True)
            ],
        )  # fmt: skip
        return [str(row["chain_id"]) for row in chains]

    def claim_slot(self, slot: datetime, now: datetime, limit: int) -> list[Chain]:
        """Claim up to ``limit`` chains whose next attempt is at ``slot`` (batch of DESIGN 3).

        Rows are locked (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so parallel batches
        split the work; SQLite: the transaction holds the write lock) and their
        attempt count raised in this transaction; a chain that moved on is not due.
        """
        stmt = (
            select(ChainRow)
            .where(ChainRow.next_slot == slot)
            .limit(limit)  # no ORDER BY: the next_slot index hands out the rest without a sort
            .execution_options(populate_existing=True)
        )
        if self.session.get_bind().dialect.name != "sqlite":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = list(self.session.scalars(stmt))
        if not rows:
            return []
        self.session.execute(
            update(ChainRow)
            .where(ChainRow.chain_id.in_([r.chain_id for r in rows]))
            .values(attempts_made=ChainRow.attempts_made + 1, version=ChainRow.version + 1,
                    updated_at=now)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        claimed = [to_chain(r) for r in rows]
        return [
            replace(c, attempts_made=c.attempts_made + 1, version=c.version + 1) for c in claimed
        ]

    def advance_many(
        self,
        steps: Sequence[
            tuple[Chain, Cursor, frozenset[CertificateKind], frozenset[CertificateKind]]
        ],
        *,
        slot: datetime,
        now: datetime,
        dispatched: datetime | None,
    ) -> None:
        """``advance`` for a claimed batch: (chain, next cursor, missing, found) each."""
        if not steps:
            return
        self.session.execute(
            update(ChainRow),
            [
                {
                    "chain_id": chain.chain_id,
                    "missing": sorted_kinds(missing),
                    "found": sorted_kinds(found),
                    "phase": cursor.phase.value,
                    "phase_used": cursor.used,
                    "next_slot": cursor.slot,
                    "dispatched_for": dispatched if cursor.slot == dispatched else None,
                    "version": chain.version + 1,
                    "updated_at": now,
                }
                for chain, cursor, missing, found in steps
            ],
        )
        self.session.execute(
            insert(HistoryRow),
            [
                self._history_values(
                    chain, Event.ATTEMPT, chain.attempts_made, slot, missing,
                    f"still missing; next {cursor.slot.isoformat()}"
                    + (" (parked, R10)" if cursor.parked and not chain.cursor.parked else ""),
                    now,
                )
                for chain, cursor, missing, _found in steps
            ],
        )  # fmt: skip

    def end_many(
        self,
        endings: Sequence[tuple[Chain, Outcome, frozenset[CertificateKind], str]],
        *,
        slot: datetime,
        now: datetime,
    ) -> list[PendingOutcome]:
        """``end_chain`` for a claimed batch: (chain, outcome, missing, reason) each."""
        if not endings:
            return []
        ids = [chain.chain_id for chain, *_ in endings]
        self.session.execute(
            delete(ChainRow)
            .where(ChainRow.chain_id.in_(ids))
            .execution_options(synchronize_session=False)
        )
        self.session.execute(
            insert(HistoryRow),
            [
                self._history_values(
                    chain,
                    Event.RESUMED if outcome is Outcome.RESUMED else Event.AUTO_CORRECTED,
                    chain.attempts_made, slot, missing, reason, now,
                )
                for chain, outcome, missing, reason in endings
            ],
        )  # fmt: skip
        rows = [
            outbox_row(chain.chain_id, chain.subject, outcome, missing, slot, now)
            for chain, outcome, missing, _reason in endings
        ]
        self.session.add_all(rows)
        self.session.flush()
        return [pending_outcome(r) for r in rows]

    def mark_dispatched_many(self, chain_ids: Sequence[str], slot: datetime) -> None:
        """The tick sent the attempt of ``slot`` for these chains."""
        if chain_ids:
            self.session.execute(
                update(ChainRow)
                .where(ChainRow.chain_id.in_(list(chain_ids)), ChainRow.next_slot == slot)
                .values(dispatched_for=slot)
                .execution_options(synchronize_session=False)
            )

    def advance(
        self,
        chain: Chain,
        cursor: Cursor,
        *,
        missing: frozenset[CertificateKind],
        found: frozenset[CertificateKind],
        slot: datetime,
        now: datetime,
    ) -> Chain:
        """After attempt ``chain.attempts_made`` at ``slot``: record it and set the next one."""
        self._update(
            chain,
            now,
            missing=sorted_kinds(missing),
            found=sorted_kinds(found),
            phase=cursor.phase.value,
            phase_used=cursor.used,
            next_slot=cursor.slot,
        )
        nxt = self.get_chain(chain.chain_id)
        assert nxt is not None
        detail = f"still missing; next {cursor.slot.isoformat()}"
        if cursor.parked and not chain.cursor.parked:
            detail += " (parked, R10)"
        self._log(nxt, Event.ATTEMPT, chain.attempts_made, slot, missing, detail, now)
        return nxt

    def reschedule(self, chain: Chain, cursor: Cursor, now: datetime, detail: str) -> Chain:
        """Move the next attempt (a close parks the chain, R10); logged as ``parked``."""
        self._update(
            chain,
            now,
            phase=cursor.phase.value,
            phase_used=cursor.used,
            next_slot=cursor.slot,
        )
        moved = self.get_chain(chain.chain_id)
        assert moved is not None
        self._log(moved, Event.PARKED, None, cursor.slot, chain.missing, detail, now)
        return moved

    def mark_dispatched(self, chain_id: str, slot: datetime) -> bool:
        """Note that the attempt message for ``slot`` was sent; False if the chain moved on."""
        result = self.session.execute(
            update(ChainRow)
            .where(ChainRow.chain_id == chain_id, ChainRow.next_slot == slot)
            .values(dispatched_for=slot)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def end_chain(
        self,
        chain: Chain,
        outcome: Outcome,
        *,
        missing: frozenset[CertificateKind],
        decided_at: datetime,
        now: datetime,
        detail: str = "",
        attempt_no: int | None = None,
    ) -> PendingOutcome:
        """R5/R8: delete the record, write history and the outcome, all in this transaction.

        ``attempt_no`` names the attempt that decided it (None: decided by a report, R3).
        """
        result = self.session.execute(
            delete(ChainRow)
            .where(ChainRow.chain_id == chain.chain_id, ChainRow.version == chain.version)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StoreError(f"chain {chain.chain_id} already ended or changed meanwhile")
        event = Event.RESUMED if outcome is Outcome.RESUMED else Event.AUTO_CORRECTED
        self._log(chain, event, attempt_no, decided_at, missing, detail, now)
        return self.add_outcome(
            chain.chain_id, chain.subject, outcome, missing=missing, decided_at=decided_at, now=now
        )

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this unit has committed; never when it rolls back."""
        self.on_commit.append(action)

    def log_immediate(
        self,
        chain_id: str,
        subject: Application,
        event: str,
        missing: frozenset[CertificateKind],
        detected_at: datetime,
        detail: str,
        now: datetime,
    ) -> None:
        """History of a report decided at once (no live record was ever kept)."""
        self.session.add(
            HistoryRow(
                chain_id=chain_id,
                application=subject.application,
                office=subject.office,
                event=event,
                attempt_no=None,
                slot=detected_at,
                missing=sorted_kinds(missing),
                detail=detail[:500],
                recorded_at=now,
            )
        )

    # -- dead letters ------------------------------------------------------------
    def add_dead_letter(self, task: str, reason: str, payload: str, now: datetime) -> int:
        """Keep a refused message with its raw body and the reason."""
        row = DeadLetterRow(task=task, reason=reason[:2000], payload=payload, received_at=now)
        self.session.add(row)
        self.session.flush()
        return row.id

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest refused messages first."""
        stmt = select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)
        return [
            DeadLetter(r.id, r.task, r.reason, r.payload, r.received_at)
            for r in self.session.scalars(stmt)
        ]

    # -- close signals -----------------------------------------------------------
    def add_close_signal(self, at: datetime, now: datetime) -> None:
        """R10: an explicit OSS close for the Japan-time day of ``at``."""
        self.session.add(CloseSignalRow(day=to_local(at).date(), at=at, recorded_at=now))

    def close_signals(self, first_day: date, last_day: date) -> list[datetime]:
        """Close signals of the days ``first_day``..``last_day`` (inclusive)."""
        stmt = select(CloseSignalRow.at).where(
            CloseSignalRow.day >= first_day, CloseSignalRow.day <= last_day
        )
        return list(self.session.scalars(stmt.order_by(CloseSignalRow.at)))

    # -- internals ---------------------------------------------------------------
    def _update(self, chain: Chain, now: datetime, **values: object) -> None:
        result = self.session.execute(
            update(ChainRow)
            .where(ChainRow.chain_id == chain.chain_id, ChainRow.version == chain.version)
            .values(version=ChainRow.version + 1, updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StoreError(f"chain {chain.chain_id} changed meanwhile (version {chain.version})")

    @staticmethod
    def _history_values(
        chain: Chain,
        event: str,
        attempt_no: int | None,
        slot: datetime | None,
        missing: frozenset[CertificateKind],
        detail: str,
        now: datetime,
    ) -> dict[str, object]:
        return {
            "chain_id": chain.chain_id,
            "application": chain.subject.application,
            "office": chain.subject.office,
            "event": event,
            "attempt_no": attempt_no,
            "slot": slot,
            "missing": sorted_kinds(missing),
            "detail": detail[:500],
            "recorded_at": now,
        }

    def _log(
        self,
        chain: Chain,
        event: str,
        attempt_no: int | None,
        slot: datetime | None,
        missing: frozenset[CertificateKind],
        detail: str,
        now: datetime,
    ) -> None:
        values = self._history_values(chain, event, attempt_no, slot, missing, detail, now)
        self.session.add(HistoryRow(**values))


class RetryStore:
    """Opens units of work over one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = make_sessions(engine)

    @classmethod
    def from_url(cls, url: str) -> RetryStore:
        """A store over the database at ``url``."""
        return cls(make_engine(url))

    @contextmanager
    def unit(self) -> Iterator[StoreUnit]:
        """One transaction: commit at the end of the block, roll back if it raises."""
        with self._sessions() as session:
            with session.begin():
                unit = StoreUnit(session)
                yield unit
            for action in unit.on_commit:
                action()
