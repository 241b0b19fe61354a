"""The service layer: reports, attempts, the grid tick, the close, the outbox relay.

Each operation reads the clock once, works in short SQL transactions (the record
of truth) and tells a ``Dispatcher`` which attempt messages to send. Celery tasks
(``tasks.py``) are thin wrappers around these methods.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from retry_pipeline.adapters.outbox import PendingOutcome
from retry_pipeline.adapters.store import Event, RetryStore, StoreUnit
from retry_pipeline.attempts import decide_attempt, kinds_to_check
from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.clock import Clock
from retry_pipeline.errors import InvalidReport, StoreError
from retry_pipeline.model import (
    PORTAL_STATUS_UNDER_REVIEW,
    Chain,
    Outcome,
    Report,
    sorted_kinds,
)
from retry_pipeline.policy import replan, start_chain
from retry_pipeline.ports import CertificateRegistry
from retry_pipeline.rules import Admission, admit_report

log = logging.getLogger(__name__)

BATCH = 500  # chains decided per transaction when a slot's attempts run together
SIGNAL_HORIZON_DAYS = 31  # close signals are read from yesterday up to this far ahead
CLAIM_TRIES = 3
MAX_CLOCK_SKEW = timedelta(minutes=5)  # a report may come from a host whose clock runs ahead


@dataclass(frozen=True)
class Dispatch:
    """An attempt message to send: chain, attempt number, slot (its ETA)."""

    chain_id: str
    attempt_no: int
    slot: datetime


class Dispatcher(Protocol):
    """Sends attempt messages (Celery in production)."""

    def send_attempt(self, dispatch: Dispatch) -> None:
        """Send one chain's attempt; it must not run before ``dispatch.slot``."""
        ...

    def send_slot(self, slot: datetime) -> None:
        """Send the attempts of every chain due at ``slot`` as one message (not before it)."""
        ...


class ExaminationGateway(Protocol):
    """The examination side (DESIGN 6): outcomes go there, at least once."""

    def deliver(self, outcome: PendingOutcome) -> None:
        """Hand one outcome to the examination side (resume pre-review or auto-correct)."""
        ...


@dataclass(frozen=True)
class Accepted:
    """What became of a report."""

    chain_id: str
    retry: bool  # False: auto-corrected at once (R1, R3)
    created: bool
    reason: str
    next_slot: datetime | None


@dataclass
class TickResult:
    """What one grid tick did."""

    parked: int = 0
    dispatched: list[Dispatch] = field(default_factory=list)
    relayed: int = 0


def park_closed(store: RetryStore, calendar: BusinessCalendar, now: datetime) -> int:
    """R10: once today's OSS close has come, park every chain still slotted today."""
    local = to_local(now)
    day = local.date()
    with store.unit() as u:
        signals = u.close_signals(
            day - timedelta(days=1), day + timedelta(days=SIGNAL_HORIZON_DAYS)
        )
    close = calendar.close_at(day, signals)
    if not calendar.is_business_day(day) or local < close:
        return 0
    end_of_day = calendar.opening_at(day).start_of("day").add(days=1)
    parked = 0
    with store.unit() as u:
        for chain in u.chains_slotted_between(close, end_of_day):
            cursor = replan(chain.cursor, calendar, signals)
            if cursor != chain.cursor:
                u.reschedule(chain, cursor, now, "R10: OSS close")
                parked += 1
    return parked


class RetryService:
    """Carries out SPEC R1–R16 over the store, the registry and the clock."""

    def __init__(
        self,
        store: RetryStore,
        registry: CertificateRegistry,
        calendar: BusinessCalendar,
        clock: Clock,
        dispatcher: Dispatcher,
        gateway: ExaminationGateway,
    ) -> None:
        self.store = store
        self.registry = registry
        self.calendar = calendar
        self.clock = clock
        self.dispatcher = dispatcher
        self.gateway = gateway
        self._slots_sent: dict[datetime, None] = {}  # insertion-ordered, bounded

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=self.calendar.settings.step_min)

    def close_signals(self, around: datetime, unit: StoreUnit | None = None) -> list[datetime]:
        """Close signals from the day before ``around`` to a month after."""
        day = to_local(around).date()
        first, last = day - timedelta(days=1), day + timedelta(days=SIGNAL_HORIZON_DAYS)
        if unit is not None:
            return unit.close_signals(first, last)
        with self.store.unit() as u:
            return u.close_signals(first, last)

    # -- reports ---------------------------------------------------------------
    def accept_report(self, report: Report) -> Accepted:
        """R1, R3, R4: start a chain, merge into the live one, or auto-correct at once."""
        result = self.accept_reports([report])[0]
        if isinstance(result, InvalidReport):
            raise result
        return result

    def accept_reports(self, reports: Sequence[Report]) -> list[Accepted | InvalidReport]:
        """``accept_report`` for many reports in one transaction (a batch message).

        A refused report (R1, a detection time in the future) is returned as its
        error and does not stop the others.
        """
        now = self.clock.now()
        results: list[Accepted | InvalidReport | None] = [None] * len(reports)
        admitted: list[tuple[int, Report, Admission]] = []
        for index, report in enumerate(reports):
            try:
                admitted.append((index, report, self._admit(report, now)))
            except InvalidReport as exc:
                results[index] = exc
        if admitted:
            with self.store.unit() as u:  # one transaction for the whole batch
                earliest = min([now, *(r.detected_at for _, r, _a in admitted)])
                signals = self.close_signals(earliest, u)
                apps = [r.subject.application for _, r, _a in admitted]
                live = u.live_applications(apps)
                decided = u.last_decisions(apps)
                # The common case in bulk: a first report of an application with no record
                # and no earlier decision. Anything else goes one by one, in order, after.
                fresh, one_by_one = [], []
                seen: set[str] = set()
                for index, report, admission in admitted:
                    app = report.subject.application
                    if admission.retry and app not in live | seen and app not in decided:
                        fresh.append((index, report, admission))
                    else:
                        one_by_one.append((index, report, admission))
                    seen.add(app)
                if not self._accept_fresh(u, fresh, signals, now, results):
                    one_by_one = sorted(fresh + one_by_one, key=lambda item: item[0])
                for index, report, admission in one_by_one:
                    results[index] = self._accept_in(
                        u, report, admission.retry, admission.reason, signals, now
                    )
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _accept_fresh(
        self,
        u: StoreUnit,
        fresh: list[tuple[int, Report, Admission]],
        signals: list[datetime],
        now: datetime,
        results: list[Accepted | InvalidReport | None],
    ) -> bool:
        """Bulk-insert first reports; False if a concurrent report got in first."""
        items = []
        for _index, report, _admission in fresh:
            cursor = start_chain(report.detected_at, self.calendar, signals)
            soon = cursor.slot <= now + self.step  # DESIGN 2: countdowns stay within a slot
            items.append((report, cursor, cursor.slot if soon else None))
        chain_ids = u.insert_reports(items, now)
        if chain_ids is None:
            return False
        for (index, _report, admission), (_r, cursor, _soon), chain_id in zip(
            fresh, items, chain_ids, strict=True
        ):
            results[index] = Accepted(chain_id, True, True, admission.reason, cursor.slot)
        for slot in sorted({d for _r, _c, d in items if d is not None}):
            u.after_commit(lambda t=slot: self._send_slot_once(t))  # type: ignore[misc]
        return True

    def _admit(self, report: Report, now: datetime) -> Admission:
        if report.detected_at > now + MAX_CLOCK_SKEW:
            raise InvalidReport(
                f"detected_at {report.detected_at.isoformat()} is in the future "
                f"(now {now.isoformat()}, allowed skew {MAX_CLOCK_SKEW})"
            )
        return admit_report(report, self.calendar.settings)  # R1: may refuse

    def _accept_in(
        self,
        u: StoreUnit,
        report: Report,
        retry: bool,
        reason: str,
        signals: list[datetime],
        now: datetime,
    ) -> Accepted:
        existing = u.find_chain(report.subject.application, lock=True)
        ended = None if existing else u.last_ending(report.subject.application)
        if existing is not None:
            return self._merge(u, existing, report, now)
        if ended is not None and report.detected_at <= ended[1]:
            # Detected before the last decision: a redelivered or repeated report.
            # A new detection comes after pre-review resumed, i.e. after that decision.
            why = f"duplicate report: already decided at {ended[1].isoformat()}"
            u.log_immediate(
                ended[0], report.subject, Event.DUPLICATE, report.missing,
                report.detected_at, why, now,
            )  # fmt: skip
            return Accepted(ended[0], False, False, why, None)
        if not retry:
            return self._auto_correct_now(u, report, reason, now)
        cursor = start_chain(report.detected_at, self.calendar, signals)
        soon = cursor.slot <= now + self.step  # DESIGN 2: countdowns stay within a slot
        recorded = u.record_report(
            report, cursor, now, known_new=True, dispatched_for=cursor.slot if soon else None
        )
        if soon and recorded.created:
            u.after_commit(lambda: self._send_slot_once(cursor.slot))
        return Accepted(recorded.chain.chain_id, True, recorded.created, reason, cursor.slot)

    def _merge(self, u: StoreUnit, chain: Chain, report: Report, now: datetime) -> Accepted:
        # R3: a certificate seen present (by pre-review or an attempt) and missing now.
        lost = report.missing & (chain.found | chain.confirmed | report.confirmed)
        if lost:
            reason = f"R3: {', '.join(sorted_kinds(lost))} found present earlier, missing now"
            ended = u.end_chain(
                chain,
                Outcome.AUTO_CORRECTED,
                missing=lost,
                decided_at=report.detected_at,
                now=now,
                detail=reason,
            )
            self._deliver_after_commit(u, ended)
            return Accepted(chain.chain_id, False, False, reason, None)
        # R4 and R16: merge into the live chain; it is never restarted or cancelled.
        u.merge_report(chain, report, now)  # the chain was read, locked, in this unit
        return Accepted(chain.chain_id, True, False, "R4: merged", chain.cursor.slot)

    def _auto_correct_now(
        self, u: StoreUnit, report: Report, reason: str, now: datetime
    ) -> Accepted:
        # The same report delivered twice must not give two outcomes: derive the id.
        key = f"{report.subject.application}|{report.detected_at.isoformat()}|immediate"
        chain_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex
        pending = u.add_outcome_once(
            chain_id,
            report.subject,
            Outcome.AUTO_CORRECTED,
            missing=report.missing,
            decided_at=report.detected_at,
            now=now,
        )
        if pending is None:
            log.info("report %s was already auto-corrected", key)
            return Accepted(chain_id, False, False, "duplicate report: " + reason, None)
        u.log_immediate(
            chain_id,
            report.subject,
            Event.AUTO_CORRECTED,
            report.missing,
            report.detected_at,
            reason,
            now,
        )
        self._deliver_after_commit(u, pending)
        return Accepted(chain_id, False, True, reason, None)

    # -- attempts --------------------------------------------------------------
    def run_attempt(self, chain_id: str, attempt_no: int, slot: datetime) -> str:
        """R8: one attempt, idempotent (DESIGN 3). Returns what it did, for logs and tests."""
        for _ in range(CLAIM_TRIES):
            now = self.clock.now()
            with self.store.unit() as u:
                chain = u.get_chain(chain_id)
            if chain is None or chain.next_attempt_no != attempt_no or chain.cursor.slot != slot:
                return "stale"  # duplicate, late redelivery, or ended meanwhile
            if now < slot:
                self.dispatcher.send_attempt(Dispatch(chain_id, attempt_no, slot))
                return "early"
            signals = self.close_signals(slot)
            cursor = replan(chain.cursor, self.calendar, signals)
            if cursor != chain.cursor:  # R10: a close took this slot away
                with self.store.unit() as u:
                    try:
                        u.reschedule(chain, cursor, now, "R10: closed before this slot")
                    except StoreError:
                        continue
                return "parked"
            present = self.registry.present(chain.subject, kinds_to_check(chain), slot)
            decision = decide_attempt(chain, present, self.calendar, signals)
            with self.store.unit() as u:
                claimed = u.claim_attempt(chain_id, attempt_no, slot, now, version=chain.version)
                if claimed is None:
                    continue  # changed meanwhile (a merge): read again
                if decision.next_cursor is not None:
                    advanced = u.advance(
                        claimed, decision.next_cursor, missing=decision.missing,
                        found=decision.found, slot=slot, now=now,
                    )  # fmt: skip
                    self._maybe_countdown(u, advanced, now)
                    parked_now = decision.next_cursor.parked and not chain.cursor.parked
                    return "parked-after" if parked_now else "next"
                assert decision.outcome is not None
                ended = u.end_chain(
                    claimed, decision.outcome, missing=decision.missing, decided_at=slot,
                    now=now, detail=decision.reason, attempt_no=attempt_no,
                )  # fmt: skip
                self._deliver_after_commit(u, ended)
                return decision.outcome.value
        return "contended"

    def run_slot(self, slot: datetime, batch: int = BATCH) -> dict[str, int]:
        """Every chain due at ``slot``, decided in batches (same rules as ``run_attempt``).

        Each batch is one transaction: claim (conditional), one registry read for
        all its applications as of the slot, bulk writes. A duplicate message, a
        second worker or a redelivery finds the claimed chains no longer due.
        """
        counts = {"next": 0, "parked": 0, Outcome.RESUMED.value: 0, Outcome.AUTO_CORRECTED.value: 0}
        now = self.clock.now()
        if now < slot:
            self.dispatcher.send_slot(slot)
            return counts
        signals = self.close_signals(slot)
        if not self.calendar.is_slot(slot, signals):
            counts["parked"] = self._park_slot(slot, signals, now)  # R10
            return counts
        while True:
            now = self.clock.now()
            with self.store.unit() as u:
                claimed = u.claim_slot(slot, now, batch)
                if not claimed:
                    return counts
                requests = [(c.subject, kinds_to_check(c)) for c in claimed]
                presents = self.registry.present_many(requests, slot)
                steps, endings = [], []
                next_slots: set[datetime] = set()
                for chain, present in zip(claimed, presents, strict=True):
                    decision = decide_attempt(chain, present, self.calendar, signals)
                    if decision.next_cursor is not None:
                        steps.append(
                            (chain, decision.next_cursor, decision.missing, decision.found)
                        )
                        next_slots.add(decision.next_cursor.slot)
                        counts["next"] += 1
                    else:
                        assert decision.outcome is not None
                        endings.append((chain, decision.outcome, decision.missing, decision.reason))
                        counts[decision.outcome.value] += 1
                soon = {t for t in next_slots if t <= now + self.step}
                dispatched = min(soon) if len(soon) == 1 else None
                u.advance_many(steps, slot=slot, now=now, dispatched=dispatched)
                self._deliver_after_commit(u, *u.end_many(endings, slot=slot, now=now))
                if dispatched is not None:
                    u.after_commit(lambda t=dispatched: self._send_slot_once(t))  # type: ignore[misc]
            if len(claimed) < batch:
                return counts

    def _park_slot(self, slot: datetime, signals: list[datetime], now: datetime) -> int:
        parked = 0
        with self.store.unit() as u:
            for chain in u.chains_slotted_between(slot, slot + timedelta(seconds=1)):
                cursor = replan(chain.cursor, self.calendar, signals)
                if cursor != chain.cursor:
                    u.reschedule(chain, cursor, now, "R10: closed before this slot")
                    parked += 1
        return parked

    def _maybe_countdown(self, u: StoreUnit, chain: Chain, now: datetime) -> None:
        """DESIGN 2: send the next attempt with an ETA when its slot is at most a slot away.

        Marked as dispatched in the same transaction; if the send is lost, the grid
        tick finds the attempt overdue and sends it again (at most one slot late).
        """
        slot = chain.cursor.slot
        if slot > now + self.step:
            return  # a later day's opening: the 08:30 tick dispatches it (R11, R13)
        if u.mark_dispatched(chain.chain_id, slot):
            u.after_commit(lambda: self._send_slot_once(slot))

    def _send_slot_once(self, slot: datetime) -> None:
        """One message per process for a future slot: a surge of reports sends a handful.

        A slot that has come may have had its message run already (a catching-up
        chain arrives after it), so a due slot is always sent again.
        """
        if slot in self._slots_sent and slot > self.clock.now():
            return
        try:
            self.dispatcher.send_slot(slot)
        except Exception:  # broker down: the tick finds it overdue and sends it again
            log.exception("could not send the attempts of %s; the grid tick will", slot)
            return
        self._slots_sent[slot] = None
        while len(self._slots_sent) > 256:
            self._slots_sent.pop(next(iter(self._slots_sent)))

    def _deliver_after_commit(self, u: StoreUnit, *outcomes: PendingOutcome) -> None:
        """Deliver just-decided outcomes once committed; the tick's relay covers failures."""
        if outcomes:
            u.after_commit(lambda: self._deliver(outcomes))

    def _deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        sent = []
        for outcome in outcomes:
            try:
                self.gateway.deliver(outcome)
            except Exception:
                log.exception("could not deliver %s; the relay will", outcome.idempotency_key)
                break
            sent.append(outcome.id)
        if sent:
            with self.store.unit() as u:
                u.mark_sent_many(sent, self.clock.now())

    # -- the grid tick and the close ---------------------------------------------
    def tick(self) -> TickResult:
        """DESIGN 4: park at the close, release at 08:30, re-send what is due and did not run."""
        now = self.clock.now()
        result = TickResult(parked=self.park_if_closed(now))
        overdue_before = now - self.step
        slots: dict[datetime, list[str]] = {}
        with self.store.unit() as u:
            for chain in u.due_chains(now, limit=1_000_000):
                if chain.dispatched_for == chain.cursor.slot and chain.cursor.slot > overdue_before:
                    continue  # its countdown is in flight and not late yet
                slots.setdefault(chain.cursor.slot, []).append(chain.chain_id)
                result.dispatched.append(
                    Dispatch(chain.chain_id, chain.next_attempt_no, chain.cursor.slot)
                )
            for slot, ids in slots.items():
                u.mark_dispatched_many(ids, slot)
        for slot in sorted(slots):
            self.dispatcher.send_slot(slot)  # one message decides the whole slot
        result.relayed = self.relay()
        return result

    def park_if_closed(self, now: datetime) -> int:
        """R10: once today's OSS close has come, park every chain still slotted today."""
        return park_closed(self.store, self.calendar, now)

    def record_close(self, at: datetime | None = None) -> int:
        """R10: an explicit close signal (default now); parks at once when already due."""
        now = self.clock.now()
        with self.store.unit() as u:
            u.add_close_signal(at or now, now)
        return self.park_if_closed(now)

    # -- outcomes --------------------------------------------------------------
    def relay(self, limit: int = 500) -> int:
        """DESIGN 5: deliver outcomes at least once, each always with its idempotency key.

        Never-sent outcomes go now; sent ones the examination side has not confirmed
        go again once two slots have passed (the broker may have forgotten them).
        """
        now = self.clock.now()
        with self.store.unit() as u:
            pending = u.pending_outcomes(limit, resend_before=now - 2 * self.step)
        self._deliver(pending)
        return len(pending)

    def portal_status(self, application: str) -> str | None:
        """R14: 「検査申請審査中」 while the application's chain is live; None otherwise
        (the examination side's own status applies). Nothing about retries is shown."""
        with self.store.unit() as u:
            live = u.find_chain(application) is not None
        return PORTAL_STATUS_UNDER_REVIEW if live else None

    def confirm_outcome(self, idempotency_key: str) -> bool:
        """The examination side acknowledges an outcome: stop re-sending it."""
        with self.store.unit() as u:
            return u.confirm_outcome(idempotency_key, self.clock.now())
