"""Every interface the use cases depend on (DESIGN 6), and nothing else.

The real adapters live in ``retry_pipeline.adapters``; one fake of each, for tests,
lives in ``tests/fakes.py``. A unit of work is one transaction with a part per table
group (``u.chains``, ``u.history``, ``u.outbox``, ``u.receipts``, ``u.signals``,
``u.dead_letters``), as cosmicpython's ``uow.products``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime
from typing import Any, Protocol

from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    DeadLetter,
    Dispatch,
    Ending,
    HistoryEntry,
    LetterBody,
    PendingOutcome,
    PendingReceipt,
    Receipt,
)


class CertificateRegistry(Protocol):
    """Reads Kei-MOTAS (軽ＭＯＴＡＳ): which certificates an application has (R1, R2)."""

    def present_many(
        self, requests: Sequence[tuple[Application, frozenset[CertificateKind]]], as_of: datetime
    ) -> list[frozenset[CertificateKind]]:
        """Which of each request's kinds are present for its application as of ``as_of``."""
        ...


class Dispatcher(Protocol):
    """Sends the attempt messages of a slot (Celery in production)."""

    def send_slot(self, slot: datetime) -> None:
        """Send the attempts of every chain due at ``slot`` as one message (not before it)."""
        ...


class ExaminationGateway(Protocol):
    """The examination side (DESIGN 6): outcomes go there, at least once."""

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        """Hand outcomes to the examination side (resume pre-review or auto-correct), in
        order and in as few broker round trips as it allows; one message each. A failure
        raises ``DeliveryFailed`` saying how many certainly went."""
        ...

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        """Hand one report's receipt to the examination side (DESIGN 11)."""
        ...


class Chains(Protocol):
    """The retry table (R4, R5): live chains, one per application."""

    def get(self, chain_id: str) -> Chain | None:
        """The live chain ``chain_id``."""
        ...

    def of_applications(self, applications: Sequence[str], *, lock: bool) -> dict[str, Chain]:
        """The live chains of these applications; ``lock`` holds their rows until commit."""
        ...

    def of_office(self, office: str | None, application: str | None = None) -> list[Chain]:
        """R15: the live chains of one office (None: every office), oldest detection first."""
        ...

    def due(self, now: datetime, limit: int) -> list[Chain]:
        """Chains whose next slot is at or before ``now``, oldest slot first."""
        ...

    def slotted_between(self, start: datetime, end: datetime) -> list[Chain]:
        """Chains whose next slot lies in [start, end), locked (R10: what a close parks)."""
        ...

    def claim(self, slot: datetime, limit: int) -> list[Chain]:
        """Lock up to ``limit`` chains due at ``slot`` that no other transaction holds."""
        ...

    def waiting(self, slot: datetime) -> int:
        """How many chains are still due at ``slot``, rows other transactions hold included."""
        ...

    def insert(self, chains: Sequence[Chain], now: datetime) -> None:
        """New records; IntegrityError when one of the applications already has one."""
        ...

    def save(self, chains: Sequence[Chain], now: datetime) -> None:
        """Write these chains' state (missing, found, confirmed, attempts, cursor, version)."""
        ...

    def mark_dispatched(self, chain_ids: Sequence[str], slot: datetime) -> None:
        """The attempt message of ``slot`` was sent for these chains (still due then)."""
        ...

    def dispatch_due(self, now: datetime, overdue_before: datetime) -> list[Dispatch]:
        """Set-based, for the grid tick: every chain due by ``now`` whose message is not in
        flight (never sent for its slot, or its slot is before ``overdue_before``) is
        marked sent for its slot; those attempts, by slot then chain id."""
        ...

    def delete(self, chain_ids: Sequence[str]) -> None:
        """R5: the chains ended; their records go (the history keeps them)."""
        ...


class History(Protocol):
    """The append-only history (R5)."""

    def append(self, entries: Sequence[HistoryEntry]) -> None:
        """Add lines, in order."""
        ...

    def lines(
        self, *, application: str | None = None, office: str | None = None
    ) -> list[HistoryEntry]:
        """Lines oldest first, optionally of one application or one office."""
        ...

    def last_decisions(self, applications: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        """(chain id, decided at) of each application's latest decision, if any."""
        ...

    def found_present(self, applications: Sequence[str]) -> dict[str, frozenset[CertificateKind]]:
        """R3: every certificate found present for each application (by an attempt of any
        of its chains, or a report's ``confirmed``); applications with none are left out."""
        ...


class Outbox(Protocol):
    """Outcomes on their way to the examination side (DESIGN 5)."""

    def add(
        self, endings: Sequence[Ending], now: datetime, *, booked_until: datetime | None = None
    ) -> list[PendingOutcome]:
        """One outcome per ending; IntegrityError when a chain already has its outcome.
        With ``booked_until``, they are written as sent once at ``now`` (handed to the
        broker right after the commit), to go again from ``booked_until`` unless
        confirmed; ``unbook`` takes back the ones whose send failed."""
        ...

    def unbook(self, outbox_ids: Sequence[int]) -> None:
        """These booked outcomes were not handed over: never sent again, for the relay."""
        ...

    def existing(self, chain_ids: Sequence[str]) -> set[str]:
        """Which of these chains already have an outcome."""
        ...

    def pending(self, limit: int, *, resend_before: datetime | None) -> list[PendingOutcome]:
        """Never-sent outcomes first (oldest first), then unconfirmed ones whose back-off
        (``mark_sent``'s ``resend_at``) ends by ``resend_before``; never given-up ones."""
        ...

    def mark_sent(
        self, outbox_ids: Sequence[int], now: datetime, *, resend_at: datetime | None = None
    ) -> None:
        """The relay handed these outcomes to the broker; unconfirmed, they may go again
        from ``resend_at``."""
        ...

    def give_up(self, outbox_ids: Sequence[int], now: datetime) -> None:
        """Stop re-sending these (sent the maximum number of times, never confirmed)."""
        ...

    def count_given_up(self) -> int:
        """Outcomes the relay gave up on, still unconfirmed (alert on this, metrics)."""
        ...

    def confirm(self, idempotency_key: str, now: datetime) -> bool:
        """The examination side has the outcome; False for an unknown key."""
        ...

    def count_unconfirmed(self) -> int:
        """Outcomes the examination side has not confirmed yet."""
        ...


class Receipts(Protocol):
    """Receipts of the reports taken, on their way to the examination side (DESIGN 11)."""

    def add(self, receipts: Sequence[Receipt], now: datetime) -> list[PendingReceipt]:
        """Keep these receipts for delivery, in order."""
        ...

    def taken(self, applications: Sequence[str]) -> dict[str, set[datetime]]:
        """The ``detected_at`` of each application's reports already taken (refusals aside)."""
        ...

    def pending(self, limit: int) -> list[PendingReceipt]:
        """Receipts never handed to the broker, oldest first."""
        ...

    def mark_sent(self, receipt_ids: Sequence[int], now: datetime) -> None:
        """The relay handed these receipts to the broker."""
        ...


class CloseSignals(Protocol):
    """Explicit OSS close signals (R10)."""

    def add(self, at: datetime, now: datetime) -> None:
        """A close at ``at``, for the Japan-time day of ``at``."""
        ...

    def between(self, first_day: date, last_day: date) -> list[datetime]:
        """Signals of the days ``first_day``..``last_day`` (inclusive), earliest first."""
        ...


class DeadLetters(Protocol):
    """Refused messages, kept with the reason and the raw body."""

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
        """Keep one (the body's first 64 KiB; ``whole``: size and hash when ``payload`` is
        already only the head); its id."""
        ...

    def purge(self, before: datetime) -> int:
        """Delete the letters received before ``before``; how many."""
        ...

    def newest(self, limit: int) -> list[DeadLetter]:
        """The newest first."""
        ...


class UnitOfWork(Protocol):
    """One transaction over every table group; commits at the end, rolls back on error."""

    @property
    def chains(self) -> Chains: ...

    @property
    def history(self) -> History: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def receipts(self) -> Receipts: ...

    @property
    def signals(self) -> CloseSignals: ...

    @property
    def dead_letters(self) -> DeadLetters: ...

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this unit has committed; never when it rolls back."""
        ...


class Store(Protocol):
    """Opens units of work."""

    @property
    def shares_claims(self) -> bool:
        """True when parallel units may claim one slot's chains side by side (SKIP LOCKED).

        False for a single-writer store (SQLite): one process works a slot through.
        """
        ...

    def unit(self) -> AbstractContextManager[UnitOfWork]:
        """A new unit of work (one transaction)."""
        ...
