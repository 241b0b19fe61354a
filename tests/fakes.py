"""One fake per interface of ``retry_pipeline.ports``, defined once, and the test factories.

- ``FakeStore``: a ``ports.Store`` whose ``unit()`` yields a ``FakeUnitOfWork`` with
  in-memory parts that behave as the SQL adapters do (``DuplicateRecord`` on a second
  record of an application or a second outcome of a chain, the whole unit rolled back
  when its block raises, ``after_commit`` actions only after a commit, the same
  orderings). Units do not nest: SQLite's write lock (``BEGIN IMMEDIATE``) would make
  a nested unit wait for the open one forever, so the fake refuses at once.
- ``RecordingDispatcher``, ``RecordingGateway``: record what the pipeline sends (slots;
  outcomes and receipts).
- ``MemoryRegistry``: Kei-MOTAS from a list of certificates, by the pure rules.
- ``Harness``: a ``Pipeline`` with its clock and fakes, and the steps tests walk
  (``at``, ``deliver``, ``walk``), over any store (``over_fakes``, ``over_sql``).
- Factories: ``continuous``, ``new_inspection``, ``report``, ``safety_for``,
  ``insurance``, ``completion_for``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from retry_pipeline.adapters.db import make_sessions
from retry_pipeline.adapters.registry import SqlCertificateRegistry, to_row
from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.errors import DeliveryFailed, DuplicateRecord
from retry_pipeline.model import (
    Application,
    Certificate,
    CertificateKind,
    Chain,
    CompletionCertificate,
    Cursor,
    DeadLetter,
    Dispatch,
    Ending,
    Event,
    HistoryEntry,
    InsuranceCertificate,
    LetterBody,
    Outcome,
    PendingOutcome,
    PendingReceipt,
    Procedure,
    Receipt,
    ReceiptStatus,
    Report,
    SafetyCertificate,
    idempotency_key,
    letter_body,
    letter_text,
    sorted_kinds,
)
from retry_pipeline.ports import (
    CertificateRegistry,
    Dispatcher,
    ExaminationGateway,
    Store,
    UnitOfWork,
)
from retry_pipeline.rules import CertificateSet, judge_presence
from retry_pipeline.service.pipeline import Pipeline

TOKYO = ZoneInfo("Asia/Tokyo")
SAFETY = CertificateKind.SAFETY
INSURANCE = CertificateKind.INSURANCE
COMPLETION = CertificateKind.COMPLETION
INSPECTED = date(2026, 11, 20)  # R2: valid 2026-11-20 .. 2026-12-04
ISSUED = date(2026, 10, 1)  # R2: completion valid through 2027-06-30
NEW_FROM = date(2026, 12, 1)  # new_inspection_retry_from in the new-inspection tests
MAX_REASON = 2000  # dead_letter.reason is String(2000)
DECISIONS = frozenset({Event.RESUMED.value, Event.AUTO_CORRECTED.value})


# -- the store -----------------------------------------------------------------------


def _utc(instant: datetime) -> datetime:
    """What a ``UTCDateTime`` column gives back: aware UTC; naive values are refused."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"naive datetime {instant!r} cannot be stored")
    return instant.astimezone(UTC)


def _utc_or_none(instant: datetime | None) -> datetime | None:
    return None if instant is None else _utc(instant)


def _stored(chain: Chain) -> Chain:
    """A chain as a read gives it back (``adapters.chains.to_chain``)."""
    cursor = Cursor(chain.cursor.phase, chain.cursor.used, to_local(_utc(chain.cursor.slot)))
    return replace(
        chain,
        detected_at=_utc(chain.detected_at),
        cursor=cursor,
        dispatched_for=_utc_or_none(chain.dispatched_for),
    )


def _by_slot(chain: Chain) -> tuple[datetime, str]:
    return (chain.cursor.slot, chain.chain_id)


@dataclass(frozen=True)
class OutboxEntry:
    """One row of the fake outbox."""

    id: int
    chain_id: str
    idempotency_key: str
    application: str
    office: str
    outcome: Outcome
    missing: tuple[str, ...]
    decided_at: datetime
    created_at: datetime
    sent_at: datetime | None = None
    send_count: int = 0
    confirmed_at: datetime | None = None
    next_send_at: datetime | None = None  # the relay's back-off
    gave_up_at: datetime | None = None

    def pending(self) -> PendingOutcome:
        return PendingOutcome(
            id=self.id,
            chain_id=self.chain_id,
            idempotency_key=self.idempotency_key,
            application=self.application,
            office=self.office,
            outcome=self.outcome,
            missing=self.missing,
            decided_at=self.decided_at,
            send_count=self.send_count,
        )


@dataclass(frozen=True)
class ReceiptEntry:
    """One row of the fake receipt table."""

    id: int
    receipt: Receipt
    created_at: datetime
    sent_at: datetime | None = None
    send_count: int = 0


@dataclass(frozen=True)
class SignalEntry:
    """One row of the fake close-signal table."""

    day: date
    at: datetime
    recorded_at: datetime


@dataclass
class FakeTables:
    """Everything a ``FakeStore`` holds; rows are immutable, so a copy is a snapshot."""

    chains: dict[str, Chain] = field(default_factory=dict)  # by chain id
    history: list[HistoryEntry] = field(default_factory=list)  # by id (index + 1)
    outbox: dict[int, OutboxEntry] = field(default_factory=dict)
    signals: list[SignalEntry] = field(default_factory=list)
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)
    receipts: dict[int, ReceiptEntry] = field(default_factory=dict)
    next_outbox_id: int = 1
    next_letter_id: int = 1
    next_receipt_id: int = 1

    def copy(self) -> FakeTables:
        return replace(
            self,
            chains=dict(self.chains),
            history=list(self.history),
            outbox=dict(self.outbox),
            signals=list(self.signals),
            dead_letters=dict(self.dead_letters),
            receipts=dict(self.receipts),
        )


class FakeChains:
    """``u.chains`` in memory (``adapters.chains.SqlChains``)."""

    def __init__(self, tables: FakeTables, race: Callable[[], None] = lambda: None) -> None:
        self._t = tables
        self._race = race

    def get(self, chain_id: str) -> Chain | None:
        return self._t.chains.get(chain_id)

    def of_applications(self, applications: Sequence[str], *, lock: bool) -> dict[str, Chain]:
        wanted = set(applications)
        return {
            c.subject.application: c
            for c in self._t.chains.values()
            if c.subject.application in wanted
        }

    def of_office(self, office: str | None, application: str | None = None) -> list[Chain]:
        found = [
            c
            for c in self._t.chains.values()
            if (office is None or c.subject.office == office)
            and (application is None or c.subject.application == application)
        ]
        return sorted(found, key=lambda c: (c.detected_at, c.chain_id))

    def due(self, now: datetime, limit: int) -> list[Chain]:
        due = [c for c in self._t.chains.values() if c.cursor.slot <= now]
        return sorted(due, key=_by_slot)[:limit]

    def slotted_between(self, start: datetime, end: datetime) -> list[Chain]:
        found = [c for c in self._t.chains.values() if start <= c.cursor.slot < end]
        return sorted(found, key=_by_slot)

    def claim(self, slot: datetime, limit: int) -> list[Chain]:
        # No ORDER BY in SQL: the next_slot index gives a slot's rows in insertion order.
        return [c for c in self._t.chains.values() if c.cursor.slot == slot][:limit]

    def waiting(self, slot: datetime) -> int:
        return sum(1 for c in self._t.chains.values() if c.cursor.slot == slot)

    def insert(self, chains: Sequence[Chain], now: datetime) -> None:
        _utc(now)
        self._race()
        taken = {c.subject.application for c in self._t.chains.values()}
        ids = set(self._t.chains)
        for chain in chains:  # all or nothing, as the savepoint around the INSERT
            if chain.subject.application in taken or chain.chain_id in ids:
                raise DuplicateRecord("another report created one of these records first")
            taken.add(chain.subject.application)
            ids.add(chain.chain_id)
        for chain in chains:
            self._t.chains[chain.chain_id] = _stored(chain)

    def save(self, chains: Sequence[Chain], now: datetime) -> None:
        _utc(now)
        for chain in chains:
            old = self._t.chains.get(chain.chain_id)
            if old is None:
                continue  # an UPDATE that matches no row changes nothing
            # Only the progress columns are written (``adapters.chains._state``).
            self._t.chains[chain.chain_id] = _stored(
                replace(
                    old,
                    missing=chain.missing,
                    found=chain.found,
                    confirmed=chain.confirmed,
                    attempts_made=chain.attempts_made,
                    cursor=chain.cursor,
                    dispatched_for=chain.dispatched_for,
                    version=chain.version,
                )
            )

    def mark_dispatched(self, chain_ids: Sequence[str], slot: datetime) -> None:
        for chain_id in chain_ids:
            chain = self._t.chains.get(chain_id)
            if chain is not None and chain.cursor.slot == slot:
                self._t.chains[chain_id] = replace(chain, dispatched_for=_utc(slot))

    def dispatch_due(self, now: datetime, overdue_before: datetime) -> list[Dispatch]:
        found = []
        for chain in sorted(self._t.chains.values(), key=_by_slot):
            slot = chain.cursor.slot
            if slot > now:
                continue
            if chain.dispatched_for == slot and slot > overdue_before:
                continue  # in flight and not late yet
            self._t.chains[chain.chain_id] = replace(chain, dispatched_for=_utc(slot))
            found.append(Dispatch(chain.chain_id, chain.next_attempt_no, slot))
        return found

    def delete(self, chain_ids: Sequence[str]) -> None:
        for chain_id in chain_ids:
            self._t.chains.pop(chain_id, None)


class FakeHistory:
    """``u.history`` in memory (``adapters.history.SqlHistory``)."""

    def __init__(self, tables: FakeTables) -> None:
        self._t = tables

    def append(self, entries: Sequence[HistoryEntry]) -> None:
        self._t.history.extend(
            replace(
                e,
                missing=tuple(e.missing),
                slot=_utc_or_none(e.slot),
                recorded_at=_utc(e.recorded_at),
                detail=e.detail[:500],
            )
            for e in entries
        )

    def lines(
        self, *, application: str | None = None, office: str | None = None
    ) -> list[HistoryEntry]:
        return [
            e
            for e in self._t.history
            if (application is None or e.application == application)
            and (office is None or e.office == office)
        ]

    def last_decisions(self, applications: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        wanted = set(applications)
        best: dict[str, tuple[datetime, int, str]] = {}
        for index, e in enumerate(self._t.history):
            if e.application not in wanted or e.event not in DECISIONS or e.slot is None:
                continue
            key = (e.slot, index, e.chain_id)
            if e.application not in best or key[:2] > best[e.application][:2]:
                best[e.application] = key
        return {app: (chain_id, slot) for app, (slot, _i, chain_id) in best.items()}

    def found_present(self, applications: Sequence[str]) -> dict[str, frozenset[CertificateKind]]:
        wanted = set(applications)
        out: dict[str, set[CertificateKind]] = {}
        for e in self._t.history:
            if e.application in wanted and e.found:
                out.setdefault(e.application, set()).update(CertificateKind(k) for k in e.found)
        return {app: frozenset(kinds) for app, kinds in out.items()}


class FakeOutbox:
    """``u.outbox`` in memory (``adapters.outbox.SqlOutbox``)."""

    def __init__(self, tables: FakeTables) -> None:
        self._t = tables

    def add(
        self, endings: Sequence[Ending], now: datetime, *, booked_until: datetime | None = None
    ) -> list[PendingOutcome]:
        booked = booked_until is not None
        chains = {e.chain_id for e in self._t.outbox.values()}
        keys = {e.idempotency_key for e in self._t.outbox.values()}
        rows: list[OutboxEntry] = []
        for ending in endings:
            key = idempotency_key(ending.chain_id, ending.outcome)
            if ending.chain_id in chains or key in keys:
                raise DuplicateRecord("one of these chains already has its outcome")
            chains.add(ending.chain_id)
            keys.add(key)
            rows.append(
                OutboxEntry(
                    id=self._t.next_outbox_id + len(rows),
                    chain_id=ending.chain_id,
                    idempotency_key=key,
                    application=ending.subject.application,
                    office=ending.subject.office,
                    outcome=ending.outcome,
                    missing=tuple(sorted_kinds(ending.missing)),
                    decided_at=_utc(ending.decided_at),
                    created_at=_utc(now),
                    sent_at=_utc(now) if booked else None,
                    send_count=1 if booked else 0,
                    next_send_at=_utc(booked_until) if booked_until is not None else None,
                )
            )
        for row in rows:
            self._t.outbox[row.id] = row
        self._t.next_outbox_id += len(rows)
        return [replace(r.pending(), send_count=0) for r in rows]  # sends before this one

    def existing(self, chain_ids: Sequence[str]) -> set[str]:
        wanted = set(chain_ids)
        return {e.chain_id for e in self._t.outbox.values() if e.chain_id in wanted}

    def pending(self, limit: int, *, resend_before: datetime | None) -> list[PendingOutcome]:
        # Never-sent first (by id), then re-sends whose back-off ends by ``resend_before``.
        rows = sorted(self._t.outbox.values(), key=lambda e: e.id)
        open_ = [e for e in rows if e.confirmed_at is None and e.gave_up_at is None]
        fresh = [e for e in open_ if e.sent_at is None][:limit]
        again: list[OutboxEntry] = []
        if resend_before is not None and len(fresh) < limit:
            cut = _utc(resend_before)

            def due_at(e: OutboxEntry) -> datetime:
                assert e.sent_at is not None
                return e.next_send_at or e.sent_at

            sent = [e for e in open_ if e.sent_at is not None and due_at(e) <= cut]
            again = sorted(sent, key=lambda e: (due_at(e), e.id))[: limit - len(fresh)]
        return [e.pending() for e in fresh + again]

    def mark_sent(
        self, outbox_ids: Sequence[int], now: datetime, *, resend_at: datetime | None = None
    ) -> None:
        for outbox_id in outbox_ids:
            row = self._t.outbox.get(outbox_id)
            if row is not None:
                self._t.outbox[outbox_id] = replace(
                    row, sent_at=_utc(now), send_count=row.send_count + 1,
                    next_send_at=None if resend_at is None else _utc(resend_at),
                )  # fmt: skip

    def unbook(self, outbox_ids: Sequence[int]) -> None:
        for outbox_id in outbox_ids:
            row = self._t.outbox.get(outbox_id)
            if row is not None and row.send_count == 1 and row.confirmed_at is None:
                self._t.outbox[outbox_id] = replace(
                    row, sent_at=None, send_count=0, next_send_at=None
                )

    def give_up(self, outbox_ids: Sequence[int], now: datetime) -> None:
        for outbox_id in outbox_ids:
            row = self._t.outbox.get(outbox_id)
            if row is not None:
                self._t.outbox[outbox_id] = replace(row, gave_up_at=_utc(now), next_send_at=None)

    def count_given_up(self) -> int:
        return sum(1 for e in self._t.outbox.values() if e.confirmed_at is None and e.gave_up_at)

    def confirm(self, idempotency_key: str, now: datetime) -> bool:
        for row in self._t.outbox.values():
            if row.idempotency_key == idempotency_key:
                if row.confirmed_at is None:
                    self._t.outbox[row.id] = replace(row, confirmed_at=_utc(now))
                return True
        return False

    def count_unconfirmed(self) -> int:
        return sum(1 for e in self._t.outbox.values() if e.confirmed_at is None)


class FakeReceipts:
    """``u.receipts`` in memory (``adapters.receipts.SqlReceipts``)."""

    def __init__(self, tables: FakeTables) -> None:
        self._t = tables

    def add(self, receipts: Sequence[Receipt], now: datetime) -> list[PendingReceipt]:
        out = []
        for receipt in receipts:
            row = ReceiptEntry(self._t.next_receipt_id, receipt, _utc(now))
            self._t.receipts[row.id] = row
            self._t.next_receipt_id += 1
            out.append(PendingReceipt(row.id, receipt))
        return out

    def taken(self, applications: Sequence[str]) -> dict[str, set[datetime]]:
        wanted = set(applications)
        found: dict[str, set[datetime]] = {}
        for row in self._t.receipts.values():
            r = row.receipt
            if r.application in wanted and r.status is not ReceiptStatus.REFUSED:
                found.setdefault(r.application, set()).add(datetime.fromisoformat(r.detected_at))
        return found

    def pending(self, limit: int) -> list[PendingReceipt]:
        due = [r for r in sorted(self._t.receipts.values(), key=lambda r: r.id) if not r.sent_at]
        return [PendingReceipt(r.id, r.receipt) for r in due[:limit]]

    def mark_sent(self, receipt_ids: Sequence[int], now: datetime) -> None:
        for receipt_id in receipt_ids:
            row = self._t.receipts.get(receipt_id)
            if row is not None:
                self._t.receipts[receipt_id] = replace(
                    row, sent_at=_utc(now), send_count=row.send_count + 1
                )


class FakeCloseSignals:
    """``u.signals`` in memory (``adapters.side_tables.SqlCloseSignals``)."""

    def __init__(self, tables: FakeTables) -> None:
        self._t = tables

    def add(self, at: datetime, now: datetime) -> None:
        self._t.signals.append(SignalEntry(to_local(at).date(), _utc(at), _utc(now)))

    def between(self, first_day: date, last_day: date) -> list[datetime]:
        return sorted(s.at for s in self._t.signals if first_day <= s.day <= last_day)


class FakeDeadLetters:
    """``u.dead_letters`` in memory (``adapters.side_tables.SqlDeadLetters``)."""

    def __init__(self, tables: FakeTables) -> None:
        self._t = tables

    def add(
        self,
        task: str,
        reason: str,
        payload: str | bytes,
        now: datetime,
        *,
        headers: Mapping[str, Any] | None = None,
        whole: LetterBody | None = None,
    ) -> int:
        body = letter_body(payload)
        size, sha = (whole.size, whole.sha256) if whole else (body.size, body.sha256)
        letter_id = self._t.next_letter_id
        self._t.next_letter_id += 1
        self._t.dead_letters[letter_id] = DeadLetter(
            letter_id, task, reason[:MAX_REASON], letter_text(body.head), _utc(now), size, sha,
            json.dumps(dict(headers or {}), default=str)[:MAX_REASON],
        )  # fmt: skip
        return letter_id

    def purge(self, before: datetime) -> int:
        old = [i for i, d in self._t.dead_letters.items() if d.received_at < _utc(before)]
        for letter_id in old:
            del self._t.dead_letters[letter_id]
        return len(old)

    def newest(self, limit: int) -> list[DeadLetter]:
        return sorted(self._t.dead_letters.values(), key=lambda d: -d.id)[:limit]


class FakeUnitOfWork:
    """One fake transaction: parts over the store's tables, actions run after commit."""

    def __init__(self, tables: FakeTables, race: Callable[[], None] = lambda: None) -> None:
        self.chains = FakeChains(tables, race)
        self.history = FakeHistory(tables)
        self.outbox = FakeOutbox(tables)
        self.receipts = FakeReceipts(tables)
        self.signals = FakeCloseSignals(tables)
        self.dead_letters = FakeDeadLetters(tables)
        self.on_commit: list[Callable[[], None]] = []

    def after_commit(self, action: Callable[[], None]) -> None:
        self.on_commit.append(action)


@dataclass
class FakeStore:
    """``ports.Store`` in memory (cosmicpython's ``FakeUnitOfWork``, dramatiq's stub broker).

    ``commits`` and ``rollbacks`` count finished units; ``tables`` may be read directly.
    ``concurrent``: writes another transaction commits just before the open unit's next
    ``chains.insert`` (a race, e.g. a second worker's report); they survive its rollback.
    ``shares_claims``: as ``ports.Store.shares_claims``.
    """

    tables: FakeTables = field(default_factory=FakeTables)
    commits: int = 0
    rollbacks: int = 0
    concurrent: list[Callable[[FakeTables], None]] = field(default_factory=list)
    shares_claims: bool = False  # True: a slot is worked one batch per message (PostgreSQL)
    _open: bool = False
    _snapshot: FakeTables | None = None

    def _race(self) -> None:
        while self.concurrent:
            write = self.concurrent.pop(0)
            write(self.tables)
            if self._snapshot is not None:
                write(self._snapshot)

    @contextmanager
    def unit(self) -> Iterator[FakeUnitOfWork]:
        if self._open:
            raise RuntimeError(
                "a unit of work is already open: on SQLite the second would wait for the "
                "first's write lock forever (units do not nest)"
            )
        snapshot = self._snapshot = self.tables.copy()
        unit = FakeUnitOfWork(self.tables, self._race)
        self._open = True
        try:
            yield unit
        except BaseException:
            # Restore in place: the parts of any unit hold this very object.
            self._restore(snapshot)
            self.rollbacks += 1
            raise
        finally:
            self._open, self._snapshot = False, None
        self.commits += 1
        for action in unit.on_commit:
            action()

    def _restore(self, snapshot: FakeTables) -> None:
        t = self.tables
        t.chains, t.history, t.outbox = snapshot.chains, snapshot.history, snapshot.outbox
        t.signals, t.dead_letters = snapshot.signals, snapshot.dead_letters
        t.next_outbox_id, t.next_letter_id = snapshot.next_outbox_id, snapshot.next_letter_id
        t.receipts, t.next_receipt_id = snapshot.receipts, snapshot.next_receipt_id


# -- the broker and the examination side --------------------------------------------------


@dataclass
class RecordingDispatcher:
    """``ports.Dispatcher``: keeps the slot of every message, in order; sends nothing.

    ``failures``: the next that many sends raise (the broker is down).
    """

    sent: list[datetime] = field(default_factory=list)
    failures: int = 0

    def send_slot(self, slot: datetime) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        self.sent.append(slot)

    def count(self, slot: datetime) -> int:
        """Messages sent for ``slot``."""
        return self.sent.count(slot)


@dataclass
class RecordingGateway:
    """``ports.ExaminationGateway``: keeps every outcome and receipt; the next ``failures``
    outcome deliveries (``receipt_failures`` receipt deliveries) raise."""

    delivered: list[PendingOutcome] = field(default_factory=list)
    receipts: list[PendingReceipt] = field(default_factory=list)
    failures: int = 0
    receipt_failures: int = 0
    stop_after: int | None = None  # the next delivery hands over only this many, then fails

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        """``failures`` makes that many delivery calls fail at once; ``stop_after`` makes
        the next one fail after handing over its first outcomes (as RabbitMQ's one-by-one
        publish can say)."""
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryFailed(0) from ConnectionError("examination side unreachable")
        if self.stop_after is not None and self.stop_after < len(outcomes):
            handed, self.stop_after = self.stop_after, None
            self.delivered.extend(outcomes[:handed])
            raise DeliveryFailed(handed) from ConnectionError("connection lost mid-batch")
        self.delivered.extend(outcomes)

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        if self.receipt_failures > 0:
            self.receipt_failures -= 1
            raise ConnectionError("examination side unreachable")
        self.receipts.append(receipt)


# -- Kei-MOTAS --------------------------------------------------------------------------


@dataclass
class MemoryRegistry:
    """``ports.CertificateRegistry`` over certificates in memory, by ``rules.judge_presence``.

    As ``adapters.registry``: a certificate counts from its ``available_at`` on, and
    ``judge_presence`` drops what is deleted (``deleted_at``) or used by another
    application as of the instant asked about.
    """

    settings: Settings
    certificates: list[Certificate] = field(default_factory=list)

    def add(self, *certificates: Certificate) -> None:
        self.certificates.extend(certificates)

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        arrived = [c for c in self.certificates if c.available_at <= as_of]
        out = []
        for subject, kinds in requests:
            certs = CertificateSet(
                safety=tuple(
                    c
                    for c in arrived
                    if isinstance(c, SafetyCertificate) and c.vehicle == subject.vehicle
                ),
                insurance=tuple(c for c in arrived if isinstance(c, InsuranceCertificate)),
                completion=tuple(
                    c
                    for c in arrived
                    if isinstance(c, CompletionCertificate) and c.vehicle == subject.vehicle
                ),
            )
            out.append(judge_presence(subject, kinds, as_of, certs, self.settings))
        return out


# -- factories ----------------------------------------------------------------------------


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def continuous(office: str = "OFFICE-A") -> Application:
    return Application(uid("app"), office, Procedure.CONTINUOUS, uid("VIN"))


def new_inspection(office: str = "OFFICE-A") -> Application:
    return Application(uid("app"), office, Procedure.NEW, uid("VIN"), "INS-9", uid("NO"))


def report(
    subject: Application,
    missing: Iterable[CertificateKind],
    detected_at: datetime,
    confirmed: Iterable[CertificateKind] = (),
) -> Report:
    return Report(subject, frozenset(missing), frozenset(confirmed), detected_at)


def safety_for(
    subject: Application,
    available_at: datetime,
    *,
    insurance_no: str,
    deleted_at: datetime | None = None,
    used_by: str | None = None,
) -> SafetyCertificate:
    return SafetyCertificate(
        id=uid("S"),
        vehicle=subject.vehicle,
        inspected_on=INSPECTED,
        insurer_id="INS-1",
        insurance_no=insurance_no,
        available_at=available_at,
        used_by=used_by,
        deleted_at=deleted_at,
    )


def insurance(insurer_id: str, insurance_no: str, available_at: datetime) -> InsuranceCertificate:
    return InsuranceCertificate(
        id=uid("I"),
        insurer_id=insurer_id,
        insurance_no=insurance_no,
        vehicle="VIN-any",
        available_at=available_at,
    )


def completion_for(subject: Application, available_at: datetime) -> CompletionCertificate:
    return CompletionCertificate(
        id=uid("C"), vehicle=subject.vehicle, issued_on=ISSUED, available_at=available_at
    )


def chain_of(
    report: Report,
    cursor: Cursor,
    *,
    found: Iterable[CertificateKind] = (),
    attempts_made: int = 0,
) -> Chain:
    """The live chain ``report`` started, at ``cursor`` (as ``u.chains`` gives it back)."""
    return Chain(
        chain_id=uuid.uuid4().hex,
        subject=report.subject,
        missing=report.missing,
        found=frozenset(found),
        confirmed=report.confirmed,
        detected_at=report.detected_at,
        attempts_made=attempts_made,
        cursor=cursor,
        version=1,
    )


# -- the harness ----------------------------------------------------------------------------


START = datetime(2026, 11, 27, 8, 0, tzinfo=TOKYO)


@dataclass
class Harness:
    """A ``Pipeline`` with its clock and fakes, for one test, over any store.

    ``insert`` puts certificates into Kei-MOTAS (the SQL tables or a ``MemoryRegistry``).
    """

    pipeline: Pipeline
    store: Store
    clock: FixedClock
    dispatcher: RecordingDispatcher
    gateway: RecordingGateway
    insert: Callable[..., None]
    ran: set[int] = field(default_factory=set)  # indexes of messages already run

    def at(self, instant: datetime) -> None:
        self.clock.current = instant

    def chain(self, application: str) -> Chain | None:
        with self.store.unit() as u:
            return u.chains.of_applications([application], lock=False).get(application)

    def live(self, application: str) -> Chain:
        chain = self.chain(application)
        assert chain is not None, f"{application} has no live chain"
        return chain

    def lines(self, application: str) -> list[HistoryEntry]:
        with self.store.unit() as u:
            return u.history.lines(application=application)

    def events(self, application: str) -> list[str]:
        return [h.event for h in self.lines(application)]

    def outbox_rows(self, application: str) -> int:
        """Chains of ``application`` (by its history) that have an outcome in the outbox."""
        ids = sorted({h.chain_id for h in self.lines(application)})
        with self.store.unit() as u:
            return len(u.outbox.existing(ids))

    def outcome_of(self, application: str) -> str | None:
        """The last ending of ``application``, when its chain has an outcome in the outbox."""
        endings = [h for h in self.lines(application) if h.event in DECISIONS]
        if not endings:
            return None
        with self.store.unit() as u:
            has_outcome = bool(u.outbox.existing([endings[-1].chain_id]))
        return endings[-1].event if has_outcome else None

    def attempt_slots(self, application: str) -> list[datetime]:
        """Slots of the attempts made (history), the deciding one included."""
        return [
            h.slot
            for h in self.lines(application)
            if h.slot is not None and h.attempt_no is not None
        ]

    def deliver(self, slot: datetime) -> None:
        """Run every message sent for ``slot`` not run yet, as the worker would."""
        for i, sent in enumerate(list(self.dispatcher.sent)):
            if sent != slot or i in self.ran:
                continue
            self.ran.add(i)
            self.pipeline.run_slot(sent)

    def walk(self, chain_id: str, application: str, slots: Sequence[datetime]) -> list[str]:
        """At each slot: beat's tick, then the message the countdown or the tick sent.

        Each step gives ``next``, ``parked-after`` (R10: the chain parked after this
        attempt) or the outcome that ended the chain ``chain_id``.
        """
        results = []
        for slot in slots:
            before = self.live(application)
            assert before.chain_id == chain_id, (slot, before)
            self.at(slot)
            self.pipeline.tick()
            count = self.dispatcher.count(slot)
            assert count == 1, (slot, self.dispatcher.sent)  # exactly one message
            self.at(slot + timedelta(seconds=2))
            self.deliver(slot)
            after = self.chain(application)
            if after is None:
                results.append(self.outcome_of(application) or "lost")
                continue
            assert after.attempts_made == before.attempts_made + 1, (slot, after)
            parked_now = after.cursor.parked and not before.cursor.parked
            results.append("parked-after" if parked_now else "next")
        return results


def one_outcome(h: Harness) -> PendingOutcome:
    """The one outcome the examination side received."""
    assert len(h.gateway.delivered) == 1, h.gateway.delivered
    return h.gateway.delivered[0]


def _harness(
    store: Store, registry: CertificateRegistry, settings: Settings, insert: Callable[..., None]
) -> Harness:
    clock = FixedClock(START)
    dispatcher = RecordingDispatcher()
    gateway = RecordingGateway()
    pipeline = Pipeline(
        store=store,
        registry=registry,
        calendar=BusinessCalendar(settings),
        clock=clock,
        dispatcher=dispatcher,
        gateway=gateway,
    )
    return Harness(pipeline, store, clock, dispatcher, gateway, insert)


def over_fakes(settings: Settings | None = None) -> Harness:
    """A harness over ``FakeStore`` and ``MemoryRegistry``: no database."""
    settings = settings or Settings()
    registry = MemoryRegistry(settings)
    return _harness(FakeStore(), registry, settings, registry.add)


def over_sql(
    store: Store, store_engine: Engine, registry_engine: Engine, settings: Settings | None = None
) -> Harness:
    """A harness over a SQL store; certificates go into its Kei-MOTAS tables."""
    settings = settings or Settings()
    sessions = make_sessions(store_engine)

    def insert(*certs: Certificate) -> None:
        with sessions() as session, session.begin():
            session.add_all([to_row(c) for c in certs])

    registry = SqlCertificateRegistry(registry_engine, settings)
    return _harness(store, registry, settings, insert)


if TYPE_CHECKING:  # mypy checks that each fake implements its port
    _store: Store = FakeStore()
    _unit: UnitOfWork = FakeUnitOfWork(FakeTables())
    _registry: CertificateRegistry = MemoryRegistry(Settings())
    _dispatcher: Dispatcher = RecordingDispatcher()
    _gateway: ExaminationGateway = RecordingGateway()
