"""Reports (R1, R3, R4): read what SQL knows, ``decide_report``, write, in one transaction.

A batch (``report_missing_batch``) and a single report take the same path: a single
report is a batch of one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from retry_pipeline.errors import DuplicateRecord, InvalidReport
from retry_pipeline.intake import Action, Known, ReportDecision, decide_report
from retry_pipeline.model import (
    Chain,
    Ending,
    Event,
    HistoryEntry,
    Outcome,
    Receipt,
    ReceiptStatus,
    Report,
    history_line,
    sorted_kinds,
)
from retry_pipeline.ports import UnitOfWork
from retry_pipeline.rules import Admission, admit_report
from retry_pipeline.service.context import Deps, close_signals
from retry_pipeline.service.outcomes import end_chains, ending_line
from retry_pipeline.service.receipts import keep_receipts, receipt_of

MAX_CLOCK_SKEW = timedelta(minutes=5)  # a report may come from a host whose clock runs ahead
RACE_TRIES = 5  # a concurrent report of the same application: read again and decide again
RECEIPT_STATUS = {
    Action.START: ReceiptStatus.ACCEPTED,
    Action.MERGE: ReceiptStatus.MERGED,
    Action.END: ReceiptStatus.AUTO_CORRECTED,  # R3: this report ends the chain at once
    Action.DUPLICATE: ReceiptStatus.DUPLICATE,
    Action.AUTO_CORRECT: ReceiptStatus.AUTO_CORRECTED,
}


@dataclass(frozen=True)
class Accepted:
    """What became of a report."""

    chain_id: str
    retry: bool  # False: auto-corrected at once (R1, R3), or a duplicate
    created: bool
    reason: str
    next_slot: datetime | None


def admit(deps: Deps, report: Report, now: datetime) -> Admission:
    """Refuse a report from the future (beyond clock skew) or not a retry target (R1)."""
    if report.detected_at > now + MAX_CLOCK_SKEW:
        raise InvalidReport(
            f"detected_at {report.detected_at.isoformat()} is in the future "
            f"(now {now.isoformat()}, allowed skew {MAX_CLOCK_SKEW})"
        )
    return admit_report(report, deps.calendar.settings)


def accept_reports(deps: Deps, reports: Sequence[Report]) -> list[Accepted | InvalidReport]:
    """Each report started, merged, ended (R3) or auto-corrected at once, in order.

    A refused report (R1, a detection time in the future) is returned as its error
    and does not stop the others.
    """
    now = deps.clock.now()
    refused: dict[int, InvalidReport] = {}
    admitted: list[tuple[int, Report, Admission]] = []
    for index, report in enumerate(reports):
        try:
            admitted.append((index, report, admit(deps, report, now)))
        except InvalidReport as exc:
            refused[index] = exc
    accepted: dict[int, Accepted] = {}
    for attempt in range(RACE_TRIES):
        try:
            with deps.store.unit() as u:
                accepted = _accept_in(deps, u, admitted, now)
            break
        except DuplicateRecord:
            if attempt == RACE_TRIES - 1:
                raise
    return [refused[i] if i in refused else accepted[i] for i in range(len(reports))]


def _accept_in(
    deps: Deps, u: UnitOfWork, admitted: list[tuple[int, Report, Admission]], now: datetime
) -> dict[int, Accepted]:
    if not admitted:
        return {}
    signals = close_signals(u, min([now, *(r.detected_at for _, r, _a in admitted)]))
    apps = [r.subject.application for _, r, _a in admitted]
    live = u.chains.of_applications(apps, lock=True)
    decided = u.history.last_decisions(apps)
    taken = u.receipts.taken(apps)
    known = {
        app: Known(live.get(app), decided.get(app), frozenset(taken.get(app, ()))) for app in apps
    }
    writes = _Writes(deps, now)
    results: dict[int, Accepted] = {}
    for index, report, admission in admitted:
        app = report.subject.application
        decision = decide_report(report, admission, known[app], deps.calendar, signals)
        before = known[app]
        accepted, after = writes.apply(report, decision, before)
        results[index] = accepted
        known[app] = replace(after, received=before.received | {report.detected_at})
        status = RECEIPT_STATUS[decision.action]
        writes.receipts.append(receipt_of(report, status, accepted.chain_id, decision.reason))
    writes.commit(u)
    return results


@dataclass
class _Writes:
    """The writes of a batch of decisions, applied in bulk at the end."""

    deps: Deps
    now: datetime
    new: dict[str, Chain] = field(default_factory=dict)  # by chain id, final state
    changed: dict[str, Chain] = field(default_factory=dict)
    endings: list[Ending] = field(default_factory=list)
    lines: list[HistoryEntry] = field(default_factory=list)
    slots: set[datetime] = field(default_factory=set)
    receipts: list[Receipt] = field(default_factory=list)  # DESIGN 11: one per report

    def apply(self, report: Report, d: ReportDecision, known: Known) -> tuple[Accepted, Known]:
        """Record one decision; what this application is known as afterwards."""
        chain, now = known.live, self.now
        if d.action is Action.START:
            return self._start(report, d)
        if d.action is Action.MERGE:
            assert chain is not None
            merged = replace(
                chain,
                missing=chain.missing | report.missing,
                confirmed=chain.confirmed | report.confirmed,
                version=chain.version + 1,
            )
            (self.new if chain.chain_id in self.new else self.changed)[chain.chain_id] = merged
            added = ", ".join(sorted_kinds(report.missing - chain.missing))
            self._line(merged, Event.MERGED, None, None, report, f"added {added or 'nothing'}")
            accepted = Accepted(chain.chain_id, True, False, d.reason, chain.cursor.slot)
            return accepted, replace(known, live=merged)
        if d.action is Action.END:
            assert chain is not None
            was_new = self.new.pop(chain.chain_id, None) is not None
            self.changed.pop(chain.chain_id, None)
            decided_at = report.detected_at
            ending = Ending(
                chain.chain_id, chain.subject, Outcome.AUTO_CORRECTED, d.lost, decided_at,
                d.reason, live=not was_new,
            )  # fmt: skip
            self._end(ending)
            accepted = Accepted(chain.chain_id, False, False, d.reason, None)
            return accepted, Known(None, (chain.chain_id, decided_at))
        if d.action is Action.DUPLICATE:
            if chain is not None:  # a re-sent report of the live chain
                ended_id = chain.chain_id
            else:  # no decision on record: a receipt without history (none is ever pruned)
                ended_id = known.last_decision[0] if known.last_decision else ""
            self.lines.append(
                history_line(
                    ended_id, report.subject, Event.DUPLICATE, None, report.detected_at,
                    report.missing, d.reason, now,
                )
            )  # fmt: skip
            return Accepted(ended_id, False, False, d.reason, None), known
        # AUTO_CORRECT. The same report delivered twice must not give two outcomes:
        # derive the id (a concurrent twin meets it in the outbox and reads again).
        key = f"{report.subject.application}|{report.detected_at.isoformat()}|immediate"
        chain_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex
        ending = Ending(
            chain_id, report.subject, Outcome.AUTO_CORRECTED, report.missing,
            report.detected_at, d.reason, live=False,
        )  # fmt: skip
        self._end(ending)
        return Accepted(chain_id, False, True, d.reason, None), Known(
            None, (chain_id, report.detected_at)
        )

    def _start(self, report: Report, d: ReportDecision) -> tuple[Accepted, Known]:
        cursor = d.cursor
        assert cursor is not None
        soon = cursor.slot <= self.now + self.deps.step  # DESIGN 2: countdowns within a slot
        chain = Chain.from_report(uuid.uuid4().hex, report, cursor, cursor.slot if soon else None)
        self.new[chain.chain_id] = chain
        if soon:
            self.slots.add(cursor.slot)
        detail = "parked (R12)" if cursor.parked else f"phase {cursor.phase.value}"
        self._line(chain, Event.REPORTED, None, cursor.slot, report, detail)
        accepted = Accepted(chain.chain_id, True, True, d.reason, cursor.slot)
        return accepted, Known(chain, None)

    def _line(
        self,
        chain: Chain,
        event: Event,
        attempt_no: int | None,
        slot: datetime | None,
        report: Report,
        detail: str,
    ) -> None:
        self.lines.append(
            history_line(
                chain.chain_id, chain.subject, event, attempt_no, slot, report.missing, detail,
                self.now,
            )
        )  # fmt: skip

    def _end(self, ending: Ending) -> None:
        self.endings.append(ending)
        self.lines.append(ending_line(ending, self.now))

    def commit(self, u: UnitOfWork) -> None:
        """Endings first (a new chain may follow an ended one), then the new records.

        A concurrent report's record or outcome fails them before anything else is written.
        """
        end_chains(self.deps, u, self.endings, self.now)
        u.chains.insert(list(self.new.values()), self.now)
        u.chains.save(list(self.changed.values()), self.now)
        u.history.append(self.lines)
        keep_receipts(self.deps, u, self.receipts, self.now)
        for slot in sorted(self.slots):
            u.after_commit(lambda t=slot: self.deps.slots.send_once(t))  # type: ignore[misc]
