"""Intake through the service over SQLite and PostgreSQL: R3 across reports, conflicting
reports (R4), late and stale reports (R4a), and what a slot says it decided.

The pipeline is wired as ``bootstrap`` wires it (real store, real Kei-MOTAS registry over
the same database) with a ``FixedClock`` and recording fakes for the broker and the
examination side. Time moves only when a test moves it; slots run when a test runs them.
Fri 2026-11-27 is a business day (review 08:30-16:00).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.registry import SqlCertificateRegistry, to_row
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidReport
from retry_pipeline.intake import Action
from retry_pipeline.model import (
    Application,
    Certificate,
    CertificateKind,
    Chain,
    CompletionCertificate,
    HistoryEntry,
    InsuranceCertificate,
    PendingOutcome,
    Procedure,
    Report,
    SafetyCertificate,
)
from retry_pipeline.service.intake import Accepted
from retry_pipeline.service.pipeline import Pipeline

TOKYO = ZoneInfo("Asia/Tokyo")
SAFETY, INSURANCE = CertificateKind.SAFETY, CertificateKind.INSURANCE
COMPLETION = CertificateKind.COMPLETION
INSPECTED = date(2026, 11, 20)  # R2: valid 2026-11-20 .. 2026-12-04


def fri(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 11, 27, hour, minute, second, tzinfo=TOKYO)


def jst(instant: datetime | None) -> str | None:
    return None if instant is None else format_instant(instant)


@dataclass
class Slots:
    """Dispatcher fake: the slot messages the pipeline sent."""

    sent: list[datetime] = field(default_factory=list)

    def send_slot(self, slot: datetime) -> None:
        self.sent.append(slot)


@dataclass
class Outcomes:
    """Examination side fake: every outcome delivered."""

    delivered: list[PendingOutcome] = field(default_factory=list)

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        self.delivered.extend(outcomes)

    def of(self, application: str) -> list[tuple[str, list[str], str]]:
        return [
            (o.outcome.value, list(o.missing), format_instant(o.decided_at))
            for o in self.delivered
            if o.application == application
        ]


@dataclass
class World:
    pipeline: Pipeline
    clock: FixedClock
    outcomes: Outcomes
    store: RetryStore

    def at(self, instant: datetime) -> None:
        self.clock.current = instant

    def add(self, *certificates: Certificate) -> None:
        with Session(self.store.engine) as session, session.begin():
            session.add_all([to_row(c) for c in certificates])

    def report(self, report: Report, sent_at: datetime | None = None) -> Accepted | InvalidReport:
        return self.pipeline.accept_reports([report], sent_at)[0]

    def run_slots(self, first: datetime, last: datetime) -> dict[datetime, dict[str, str]]:
        """Every grid slot from ``first`` to ``last`` (one day), in order, at its time."""
        decided: dict[datetime, dict[str, str]] = {}
        for slot in self.pipeline.calendar.slots(first.date()):
            if first <= slot <= last:
                self.at(slot)
                decided[slot] = {}
                self.pipeline.run_slot(slot, decided=decided[slot])
        return decided

    def live(self, application: str) -> Chain | None:
        with self.store.unit() as u:
            return u.chains.of_applications([application], lock=False).get(application)

    def history(self, application: str) -> list[HistoryEntry]:
        with self.store.unit() as u:
            return u.history.lines(application=application)


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    yield from _world(db_url, Settings())


@pytest.fixture
def new_world(db_url: str) -> Iterator[World]:
    """New-inspection retries in force from Mon 2026-11-02 (R1)."""
    yield from _world(db_url, Settings(new_inspection_retry_from=date(2026, 11, 2)))


def _world(db_url: str, settings: Settings) -> Iterator[World]:
    store = RetryStore(make_engine(db_url))
    registry_engine = make_engine(db_url, write_lock=False)
    clock = FixedClock(fri(8, 0))
    outcomes = Outcomes()
    pipeline = Pipeline(
        store=store,
        registry=SqlCertificateRegistry(registry_engine, settings),
        calendar=BusinessCalendar(settings),
        clock=clock,
        dispatcher=Slots(),
        gateway=outcomes,
    )
    yield World(pipeline, clock, outcomes, store)
    store.engine.dispose()
    registry_engine.dispose()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def continuous(office: str = "OFFICE-A") -> Application:
    return Application(uid("OSS"), office, Procedure.CONTINUOUS, uid("VIN"))


def report(
    subject: Application,
    missing: set[CertificateKind],
    detected_at: datetime,
    confirmed: set[CertificateKind] | None = None,
) -> Report:
    return Report(subject, frozenset(missing), frozenset(confirmed or ()), detected_at)


def certificates(
    subject: Application, safety_at: datetime, insurance_at: datetime
) -> list[Certificate]:
    """A valid safety certificate and the insurance certificate it names."""
    number = uid("NO")
    return [
        SafetyCertificate(uid("S"), subject.vehicle, INSPECTED, "INS-1", number, safety_at),
        InsuranceCertificate(uid("I"), "INS-1", number, subject.vehicle, insurance_at),
    ]


def accepted(result: Accepted | InvalidReport) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


# -- R3 across reports -----------------------------------------------------------------------------


def test_r3_the_issues_example_resumed_at_0940_then_reported_missing_at_0944(world: World) -> None:
    """An attempt finds safety and the application resumes at 09:40; a report at 09:44
    says safety is missing: auto-corrected at 09:44, with no chain."""
    app = continuous()
    world.add(*certificates(app, fri(9, 35), fri(8, 0)))
    world.at(fri(9, 25, 30))
    first = accepted(world.report(report(app, {SAFETY}, fri(9, 25))))
    assert (first.action, jst(first.next_slot)) == (Action.START, "2026-11-27T09:30:00+09:00")
    world.run_slots(fri(9, 30), fri(9, 40))
    assert world.outcomes.of(app.application) == [("resumed", [], "2026-11-27T09:40:00+09:00")]

    world.at(fri(9, 44, 5))
    again = accepted(world.report(report(app, {SAFETY}, fri(9, 44))))
    assert (again.action, again.retry, again.reason) == (
        Action.AUTO_CORRECT, False, "R3: safety found present earlier, missing now",
    )  # fmt: skip
    assert world.live(app.application) is None
    assert world.outcomes.of(app.application) == [
        ("resumed", [], "2026-11-27T09:40:00+09:00"),
        ("auto_corrected", ["safety"], "2026-11-27T09:44:00+09:00"),
    ]
    lines = [
        (h.event, h.attempt_no, jst(h.slot), list(h.found)) for h in world.history(app.application)
    ]
    assert lines == [
        ("reported", None, "2026-11-27T09:30:00+09:00", []),
        ("attempt", 1, "2026-11-27T09:30:00+09:00", []),
        ("resumed", 2, "2026-11-27T09:40:00+09:00", ["safety", "insurance"]),
        ("auto_corrected", None, "2026-11-27T09:44:00+09:00", []),
    ]


def test_r3_found_present_by_an_earlier_reports_confirmed(world: World) -> None:
    """The first report confirmed safety; its chain ends (insurance never came). A later
    report naming safety missing is auto-corrected at once."""
    app = continuous()
    world.add(certificates(app, fri(8, 0), fri(8, 0))[0])  # safety only
    world.at(fri(8, 36, 10))
    accepted(world.report(report(app, {INSURANCE}, fri(8, 36), confirmed={SAFETY})))
    world.run_slots(fri(8, 40), fri(9, 30))
    assert world.outcomes.of(app.application) == [
        ("auto_corrected", ["insurance"], "2026-11-27T09:30:00+09:00")
    ]
    world.at(fri(10, 0, 10))
    later = accepted(world.report(report(app, {SAFETY}, fri(10, 0))))
    assert (later.action, later.reason) == (
        Action.AUTO_CORRECT, "R3: safety found present earlier, missing now",
    )  # fmt: skip
    assert world.outcomes.of(app.application)[-1] == (
        "auto_corrected", ["safety"], "2026-11-27T10:00:00+09:00",
    )  # fmt: skip


def test_r3_across_reports_a_redelivered_first_report_is_only_a_duplicate(world: World) -> None:
    app = continuous()
    world.add(*certificates(app, fri(8, 45), fri(8, 0)))
    world.at(fri(8, 36, 10))
    first_report = report(app, {SAFETY}, fri(8, 36))
    accepted(world.report(first_report))
    world.run_slots(fri(8, 40), fri(8, 50))
    world.at(fri(9, 5))
    again = accepted(world.report(first_report))
    assert again.action is Action.DUPLICATE
    assert world.outcomes.of(app.application) == [("resumed", [], "2026-11-27T08:50:00+09:00")]


def test_r3_across_reports_inside_a_batch(world: World) -> None:
    """In one batch: the application found before is auto-corrected, a new one starts."""
    found_before, fresh = continuous(), continuous()
    world.add(*certificates(found_before, fri(8, 0), fri(8, 0)))
    world.at(fri(8, 36, 10))
    accepted(world.report(report(found_before, {SAFETY}, fri(8, 36))))
    world.run_slots(fri(8, 40), fri(8, 40))
    world.at(fri(10, 1))
    results = world.pipeline.accept_reports(
        [report(found_before, {INSURANCE}, fri(10, 0)), report(fresh, {SAFETY}, fri(10, 0))]
    )
    assert [accepted(r).action for r in results] == [Action.AUTO_CORRECT, Action.START]
    assert accepted(results[0]).reason == "R3: insurance found present earlier, missing now"
    assert world.live(found_before.application) is None
    assert world.live(fresh.application) is not None


def test_the_live_chains_own_report_again_after_a_partial_find_only_merges(
    new_world: World,
) -> None:
    """New inspection, completion and insurance missing; the 08:50 attempt finds the
    completion certificate. The same report delivered again at 09:05 (a redelivery) is not
    R3: nothing is added, the chain goes on and resumes when the insurance comes."""
    world = new_world
    app = Application(uid("OSS"), "OFFICE-A", Procedure.NEW, uid("VIN"), "INS-1", uid("NO"))
    world.add(
        CompletionCertificate(uid("C"), app.vehicle, date(2026, 11, 1), fri(8, 45)),
        InsuranceCertificate(uid("I"), "INS-1", str(app.insurance_no), app.vehicle, fri(9, 15)),
    )
    first = report(app, {COMPLETION, INSURANCE}, fri(8, 36))
    world.at(fri(8, 36, 10))
    accepted(world.report(first))
    world.run_slots(fri(8, 40), fri(8, 50))
    world.at(fri(9, 5))
    again = accepted(world.report(first))
    # DESIGN 11: the same (application, detected_at) again is a duplicate (a receipt
    # tells the sender); the chain is untouched and goes on (never ended by R3).
    assert (again.action, again.next_slot) == (Action.DUPLICATE, None)
    chain = world.live(app.application)
    assert chain is not None and chain.missing == {INSURANCE} and chain.found == {COMPLETION}
    assert [h.event for h in world.history(app.application)].count("duplicate") == 1
    world.run_slots(fri(9, 0), fri(9, 20))
    assert world.outcomes.of(app.application) == [("resumed", [], "2026-11-27T09:20:00+09:00")]


def test_found_present_reads_every_chain_and_report_of_the_applications(world: World) -> None:
    a, b, nothing = continuous(), continuous(), continuous()
    world.add(*certificates(a, fri(8, 0), fri(8, 0)))
    world.at(fri(8, 36, 10))
    accepted(world.report(report(a, {SAFETY}, fri(8, 36))))
    accepted(world.report(report(b, {INSURANCE}, fri(8, 36), confirmed={SAFETY})))
    accepted(world.report(report(nothing, {SAFETY}, fri(8, 36))))
    world.run_slots(fri(8, 40), fri(8, 40))
    with world.store.unit() as u:
        found = u.history.found_present([a.application, b.application, nothing.application])
    assert found == {a.application: {SAFETY, INSURANCE}, b.application: {SAFETY}}


def test_a_new_chain_checks_again_what_an_earlier_chain_found(world: World) -> None:
    """Chain 1 confirmed insurance; chain 2 (safety missing) carries it as confirmed (R3)."""
    app = continuous()
    world.at(fri(8, 36, 10))
    accepted(world.report(report(app, {SAFETY}, fri(8, 36), confirmed={INSURANCE})))
    world.run_slots(fri(8, 40), fri(9, 30))
    world.at(fri(10, 0, 10))
    second = accepted(world.report(report(app, {SAFETY}, fri(10, 0))))
    assert second.action is Action.START
    chain = world.live(app.application)
    assert chain is not None and chain.confirmed == {INSURANCE} and chain.missing == {SAFETY}


# -- conflicting reports (R4) ----------------------------------------------------------------------


def test_a_conflicting_report_is_refused_and_the_live_chain_unchanged(world: World) -> None:
    app = continuous("KEI-OSAKA")
    world.at(fri(8, 36, 10))
    accepted(world.report(report(app, {SAFETY}, fri(8, 36))))
    before = world.live(app.application)
    other_office = Application(app.application, "KEI-KOBE", app.procedure, app.vehicle)
    world.at(fri(8, 38, 10))
    refused = world.report(report(other_office, {SAFETY, INSURANCE}, fri(8, 38)))
    assert isinstance(refused, InvalidReport)
    assert str(refused) == (
        f"conflicting report (R4): {app.application} has a live chain with office KEI-OSAKA "
        "(this report: KEI-KOBE); refused, the live chain is unchanged"
    )
    assert world.live(app.application) == before
    assert [h.event for h in world.history(app.application)] == ["reported"]


def test_a_report_that_only_adds_missing_certificates_still_merges(world: World) -> None:
    app = continuous()
    world.at(fri(8, 36, 10))
    accepted(world.report(report(app, {SAFETY}, fri(8, 36))))
    world.at(fri(8, 38, 10))
    merged = accepted(world.report(report(app, {INSURANCE}, fri(8, 38))))
    assert (merged.action, jst(merged.next_slot)) == (Action.MERGE, "2026-11-27T08:40:00+09:00")
    chain = world.live(app.application)
    assert chain is not None and chain.missing == {SAFETY, INSURANCE}


def test_conflicts_inside_a_batch_are_refused_one_by_one(world: World) -> None:
    """A batch: a first report, a conflicting one (another vehicle) and a merging one."""
    app, other = continuous(), continuous()
    world.at(fri(8, 36, 10))
    other_vehicle = Application(app.application, app.office, app.procedure, "JA99-000000")
    results = world.pipeline.accept_reports(
        [
            report(app, {SAFETY}, fri(8, 35)),
            report(other_vehicle, {SAFETY}, fri(8, 35, 30)),
            report(app, {INSURANCE}, fri(8, 36)),
            report(other, {SAFETY}, fri(8, 36)),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "Accepted",
        "InvalidReport",
        "Accepted",
        "Accepted",
    ]
    assert "vehicle" in str(results[1]) and "JA99-000000" in str(results[1])
    assert [accepted(results[i]).action for i in (0, 2, 3)] == [
        Action.START,
        Action.MERGE,
        Action.START,
    ]
    chain = world.live(app.application)
    assert chain is not None
    assert (chain.subject.vehicle, chain.missing) == (app.vehicle, {SAFETY, INSURANCE})


# -- late and stale reports (R4a) ------------------------------------------------------------------


def test_r4a_the_issues_example_detected_0836_reaching_the_pipeline_at_1000(world: World) -> None:
    """Never decided on 08:40-09:30: planned from 10:00, it finds the certificates that
    arrived at 09:35 at its first attempt, 10:10."""
    app = continuous()
    world.add(*certificates(app, fri(9, 35), fri(8, 0)))
    world.at(fri(10, 0))
    late = accepted(world.report(report(app, {SAFETY}, fri(8, 36))))
    assert (late.action, jst(late.next_slot)) == (Action.START, "2026-11-27T10:10:00+09:00")
    chain = world.live(app.application)
    assert chain is not None and jst(chain.detected_at) == "2026-11-27T08:36:00+09:00"
    (line,) = world.history(app.application)
    assert (line.event, line.late_s, line.detail) == (
        "reported", 5040,
        "phase same_day; R4a: planned from its arrival, 1 h 24 min after detection",
    )  # fmt: skip
    passed = world.run_slots(fri(8, 40), fri(10, 0))  # the slots before its arrival
    assert len(passed) == 9 and all(d == {} for d in passed.values())
    world.run_slots(fri(10, 10), fri(10, 10))
    assert world.outcomes.of(app.application) == [("resumed", [], "2026-11-27T10:10:00+09:00")]


def test_r4a_time_in_the_pipelines_own_broker_does_not_make_a_report_late(world: World) -> None:
    """Sent at 08:37, taken at 10:00 (the worker was down): it reached the pipeline on
    time, so its chain catches up on its own slots, judged as of each slot."""
    app = continuous()
    world.at(fri(10, 0))
    on_time = accepted(world.report(report(app, {SAFETY}, fri(8, 36)), sent_at=fri(8, 37)))
    assert jst(on_time.next_slot) == "2026-11-27T08:40:00+09:00"
    assert world.history(app.application)[0].late_s is None


def test_r4a_a_sent_at_ahead_of_the_pipelines_clock_counts_as_now(world: World) -> None:
    app = continuous()
    world.at(fri(10, 0))
    late = accepted(world.report(report(app, {SAFETY}, fri(8, 36)), sent_at=fri(12, 0)))
    assert jst(late.next_slot) == "2026-11-27T10:10:00+09:00"


def test_r4a_a_report_older_than_a_day_is_refused_as_stale_and_nothing_is_written(
    world: World,
) -> None:
    app = continuous()
    world.at(fri(10, 0))
    thursday = fri(9, 59) - timedelta(days=1)
    refused = world.report(report(app, {SAFETY}, thursday))
    assert isinstance(refused, InvalidReport)
    assert str(refused) == (
        "stale report (R4a): detected at 2026-11-26T09:59:00+09:00, more than 1 d before it "
        "reached the pipeline; the examination side must check again"
    )
    assert world.live(app.application) is None
    assert world.history(app.application) == []


def test_a_report_from_the_future_is_refused_in_japan_time(world: World) -> None:
    app = continuous()
    world.at(fri(10, 0))
    refused = world.report(report(app, {SAFETY}, fri(10, 6)))
    assert isinstance(refused, InvalidReport)
    assert str(refused) == (
        "detected_at 2026-11-27T10:06:00+09:00 is in the future "
        "(now 2026-11-27T10:00:00+09:00, allowed skew 0:05:00)"
    )


# -- what a slot says it decided (Flower) ----------------------------------------------------------


def test_a_slot_names_the_applications_it_decided_and_how(world: World) -> None:
    found, never, gone = continuous(), continuous(), continuous()
    world.add(*certificates(found, fri(8, 45), fri(8, 0)))
    world.at(fri(8, 37))
    for subject in (found, never, gone):
        accepted(world.report(report(subject, {SAFETY}, fri(8, 36))))
    decided = world.run_slots(fri(8, 40), fri(9, 30))
    assert decided[fri(8, 40)] == {
        found.application: "next 2026-11-27T08:50:00+09:00",
        never.application: "next 2026-11-27T08:50:00+09:00",
        gone.application: "next 2026-11-27T08:50:00+09:00",
    }
    assert decided[fri(8, 50)][found.application] == "resumed"
    assert decided[fri(9, 30)] == {
        never.application: "auto_corrected: safety",
        gone.application: "auto_corrected: safety",
    }
