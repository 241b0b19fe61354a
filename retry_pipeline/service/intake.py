"""Reports (R1, R3, R4, R4a): read what SQL knows, ``decide_report``, write, in one transaction.

A batch (``report_missing_batch``) and a single report take the same path: a single
report is a batch of one. What SQL knows of an application: its live chain, its last
decision and every certificate found present for it before (``u.history.found_present``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from retry_pipeline.calendar import format_instant
from retry_pipeline.errors import DuplicateRecord, InvalidReport
from retry_pipeline.intake import Action, Known, ReportDecision, decide_report, duration
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
    action: Action = Action.START  # what became of it (``intake.Action``)


def admit(deps: Deps, report: Report, now: datetime) -> Admission:
    """Refuse a report from the future (beyond clock skew) or not a retry target (R1)."""
    if report.detected_at > now + MAX_CLOCK_SKEW:
        raise InvalidReport(
            f"detected_at {format_instant(report.detected_at)} is in the future "
            f"(now {format_instant(now)}, allowed skew {MAX_CLOCK_SKEW})"
        )
    return admit_report(report, deps.calendar.settings)


def arrival(now: datetime, sent_at: datetime | None) -> datetime:
    """R4a: when the reports reached the pipeline: when they were sent to its queue, if the
    sender said so and it is not ahead of ``now`` (time spent in our broker is ours), else now."""
    if sent_at is None or sent_at.tzinfo is None or sent_at > now:
        return now
    return sent_at


def accept_reports(
    deps: Deps,
    reports: Sequence[Report],
    sent_at: datetime | None = None,
    *,
    each_sent_at: Sequence[datetime | None] | None = None,
) -> list[Accepted | InvalidReport]:
    """Each report started, merged, ended (R3), auto-corrected at once or refused, in order.

    A refused report (R1, a detection time in the future, R4 a conflict with the live
    record, R4a stale) is returned as its error and does not stop the others.
    ``sent_at``: when the sender put them on the pipeline's queue (R4a, ``arrival``);
    ``each_sent_at``: the same for each report (one-report messages taken together).
    """
    now = deps.clock.now()
    if each_sent_at is None:
        arrived = [arrival(now, sent_at)] * len(reports)
    elif len(each_sent_at) != len(reports):
        raise ValueError("each_sent_at needs one sent-at per report")
    else:
        arrived = [arrival(now, at) for at in each_sent_at]
    refused: dict[int, InvalidReport] = {}
    admitted: list[tuple[int, Report, Admission]] = []
    for index, report in enumerate(reports):
        try:
            admitted.append((index, report, admit(deps, report, now)))
        except InvalidReport as exc:
            refused[index] = exc
    accepted: dict[int, Accepted | InvalidReport] = {}
    for attempt in range(RACE_TRIES):
        try:
            with deps.store.unit() as u:
                accepted = _accept_in(deps, u, admitted, now, arrived)
            break
        except DuplicateRecord:
            if attempt == RACE_TRIES - 1:
                raise
    return [refused[i] if i in refused else accepted[i] for i in range(len(reports))]


def _accept_in(
    deps: Deps,
    u: UnitOfWork,
    admitted: list[tuple[int, Report, Admission]],
    now: datetime,
    arrived: list[datetime],
) -> dict[int, Accepted | InvalidReport]:
    if not admitted:
        return {}
    first = min(
        [*(arrived[i] for i, _r, _a in admitted), *(r.detected_at for _, r, _a in admitted)]
    )
    signals = close_signals(u, first)
    apps = [r.subject.application for _, r, _a in admitted]
    live = u.chains.of_applications(apps, lock=True)
    decided = u.history.last_decisions(apps)
    found = u.history.found_present(apps)
    taken = u.receipts.taken(apps)
    known = {
        app: Known(
            live.get(app),
            decided.get(app),
            found.get(app, frozenset()),
            frozenset(taken.get(app, ())),
        )
        for app in apps
    }
    writes = _Writes(deps, now)
    results: dict[int, Accepted | InvalidReport] = {}
    for index, report, admission in admitted:
        app = report.subject.application
        decision = decide_report(
            report, admission, known[app], deps.calendar, signals, arrived_at=arrived[index]
        )
        before = known[app]
        result, after = writes.apply(report, decision, before)
        results[index] = result
        if isinstance(result, InvalidReport):
            continue  # refused: the task keeps the dead letter and its refused receipt
        known[app] = replace(after, received=before.received | {report.detected_at})
        status = RECEIPT_STATUS[decision.action]
        writes.receipts.append(receipt_of(report, status, result.chain_id, decision.reason))
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

    def apply(
        self, report: Report, d: ReportDecision, known: Known
    ) -> tuple[Accepted | InvalidReport, Known]:
        """Record one decision; what this application is known as afterwards."""
        if d.action is Action.REFUSE:  # R4 conflict, R4a stale: nothing written here
            return InvalidReport(d.reason), known
        # R3: a report's confirmed certificates count as found present from now on.
        known = replace(known, found_before=known.found_before | report.confirmed)
        chain, now = known.live, self.now
        if d.action is Action.START:
            return self._start(report, d, known)
        if d.action is Action.MERGE:
            assert chain is not None
            merged = replace(
                chain,
                missing=chain.missing | (report.missing - chain.found),  # a repeat adds none
                confirmed=chain.confirmed | report.confirmed,
                version=chain.version + 1,
            )
            (self.new if chain.chain_id in self.new else self.changed)[chain.chain_id] = merged
            added = ", ".join(sorted_kinds(merged.missing - chain.missing))
            self._line(merged, Event.MERGED, None, None, report, f"added {added or 'nothing'}")
            accepted = Accepted(chain.chain_id, True, False, d.reason, chain.cursor.slot, d.action)
            return accepted, replace(known, live=merged)
        if d.action is Action.END:
            assert chain is not None
            was_new = self.new.pop(chain.chain_id, None) is not None
            self.changed.pop(chain.chain_id, None)
            decided_at = report.detected_at
            ending = Ending(
                chain.chain_id, chain.subject, Outcome.AUTO_CORRECTED, d.lost, decided_at,
                d.reason, live=not was_new, found=report.confirmed,
            )  # fmt: skip
            self._end(ending)
            accepted = Accepted(chain.chain_id, False, False, d.reason, None, d.action)
            return accepted, replace(known, live=None, last_decision=(chain.chain_id, decided_at))
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
            return Accepted(ended_id, False, False, d.reason, None, d.action), known
        # AUTO_CORRECT (R1, R3 within the report or across reports), named as the
        # pre-review found it. The same report delivered twice must not give two outcomes:
        # derive the id (a concurrent twin meets it in the outbox and reads again).
        key = f"{report.subject.application}|{report.detected_at.isoformat()}|immediate"
        chain_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex
        ending = Ending(
            chain_id, report.subject, Outcome.AUTO_CORRECTED, report.missing,
            report.detected_at, d.reason, live=False, found=report.confirmed,
        )  # fmt: skip
        self._end(ending)
        accepted = Accepted(chain_id, False, True, d.reason, None, d.action)
        return accepted, replace(known, live=None, last_decision=(chain_id, report.detected_at))

    def _start(self, report: Report, d: ReportDecision, known: Known) -> tuple[Accepted, Known]:
        cursor = d.cursor
        assert cursor is not None
        soon = cursor.slot <= self.now + self.deps.step  # DESIGN 2: countdowns within a slot
        chain = Chain.from_report(uuid.uuid4().hex, report, cursor, cursor.slot if soon else None)
        if d.carried:  # R3: found present by an earlier chain: checked again like confirmed
            chain = replace(chain, confirmed=chain.confirmed | d.carried)
        self.new[chain.chain_id] = chain
        if soon:
            self.slots.add(cursor.slot)
        detail = "parked (R12)" if cursor.parked else f"phase {cursor.phase.value}"
        if d.late_s is not None:
            detail += f"; R4a: planned from its arrival, {duration(d.late_s)} after detection"
        self._line(chain, Event.REPORTED, None, cursor.slot, report, detail, late_s=d.late_s)
        accepted = Accepted(chain.chain_id, True, True, d.reason, cursor.slot, d.action)
        return accepted, replace(known, live=chain, last_decision=None)

    def _line(
        self,
        chain: Chain,
        event: Event,
        attempt_no: int | None,
        slot: datetime | None,
        report: Report,
        detail: str,
        late_s: int | None = None,
    ) -> None:
        self.lines.append(
            history_line(
                chain.chain_id, chain.subject, event, attempt_no, slot, report.missing, detail,
                self.now, found=report.confirmed, late_s=late_s,
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
