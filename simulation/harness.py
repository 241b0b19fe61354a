"""``retry-pipeline simulate``: a scenario through the real pipeline on a scaled clock.

Reports go as Celery messages through Redis or RabbitMQ to a real worker; a real beat ticks
on the grid of a clock ``time_scale`` times faster than real time that jumps over
idle nights; certificates are written into the Kei-MOTAS tables at their times;
a stand-in examination side receives outcomes over Celery. Attempts judge
certificates as of their slot, so the report does not depend on machine load.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from amqp.exceptions import AMQPError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import create_registry_standin
from retry_pipeline.adapters.registry import to_row
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.client import DurableSender
from retry_pipeline.clock import FileClock
from retry_pipeline.config import PREFIX, Settings
from retry_pipeline.model import Certificate
from retry_pipeline.redact import mask_url
from simulation import examination
from simulation.databases import backend_of, private_database
from simulation.faults import Injector, build_injector, refuse_unsupported
from simulation.processes import (
    EXAMINATION,
    Progress,
    Run,
    SimulationError,
    choose_broker,
    is_amqp,
    queue_empty,
    refuse_amqp_faults,
    reports_in_broker,
    wait_ready,
)
from simulation.queries import snapshot
from simulation.report import (
    RunStats,
    application_of,
    attempt_lateness,
    build_report,
    endings_per_chain,
    held_and_others,
    outcomes_per_application,
)
from simulation.scenario import Scenario

__all__ = ["Options", "RunStats", "SimulationError", "run_simulation", "simulate"]

LEAD = timedelta(minutes=1)  # a jump lands this long before the next thing to happen
IDLE_GAP = timedelta(minutes=20)  # only gaps longer than this are jumped over
SETTLE_S = 0.5  # real seconds with nothing left to do before the run is over
RESEND_EVERY_S = 0.25  # real seconds between the examination side's re-send sweeps
GONE_AFTER_S = 2.0  # real seconds a send may be neither handled nor in the broker
MAX_RESTARTS = 30


@dataclass
class Options:
    """How a simulation runs."""

    time_scale: float = 600.0
    # a Redis or RabbitMQ (amqp://) URL; default: the local Redis, else a private one
    broker_url: str | None = None
    redis_db: int = 13  # database on a shared Redis; each run has its own queue names
    concurrency: int = 2
    timeout_s: float = 900.0
    workdir: Path | None = None  # keep the database and logs here instead of a temp dir
    on_started: Callable[[Run], None] | None = None  # hook for fault injection
    loglevel: str = "WARNING"  # of the worker and beat logs in the workdir
    faults: tuple[str, ...] = ()  # see simulation/faults.py; forces a private Redis
    fault_seed: int = 0
    # sqlite (a file in the workdir), postgresql (a private database, dropped after) or
    # a PostgreSQL URL to create that private database on (see simulation/databases.py)
    database: str = "sqlite"


def simulate(
    scenario: Scenario, options: Options, progress: Progress | None = None
) -> dict[str, Any]:
    """Run ``scenario`` and return the report (see the README for its contract)."""
    return run_simulation(scenario, options, progress)[0]


def run_simulation(
    scenario: Scenario, options: Options, progress: Progress | None = None
) -> tuple[dict[str, Any], RunStats]:
    """Run ``scenario``; the report, and what happened on the way."""
    wall_started = time.monotonic()
    say = progress or (lambda _msg: None)
    try:
        refuse_unsupported(options.faults, backend_of(options.database))
        refuse_amqp_faults(options.faults, options.broker_url)
    except ValueError as exc:
        raise SimulationError(str(exc)) from None
    reports = scenario.report_messages()
    certificates = sorted(scenario.certificate_models(), key=lambda c: c.available_at)
    # A certificate row carries the instant it reached Kei-MOTAS and attempts read "as
    # of" their slot, so it is written one slot early: a lagging loop never misses it.
    lead = timedelta(minutes=Settings().step_min)
    events = sorted(
        [(r.detected_at, 1, i) for i, r in enumerate(reports)]
        + [(c.available_at - lead, 0, i) for i, c in enumerate(certificates)]
    )
    origin = min(r.detected_at for r in reports) - LEAD
    applications = sorted({r.application for r in reports})

    tmp = None if options.workdir else tempfile.TemporaryDirectory(prefix="retry-pipeline-sim-")
    workdir = options.workdir or Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("sender.sqlite3*"):
        stale.unlink()
    for stale in workdir.glob("beat*-schedule*"):
        stale.unlink()
    broker_url, private = choose_broker(options.broker_url, options.redis_db, bool(options.faults))
    shown = mask_url(broker_url)
    say(f"broker {shown}{' (private redis-server)' if private else ''}; workdir {workdir}")
    run: Run | None = None
    engine = None
    injector: Injector | None = None
    databases = contextlib.ExitStack()
    try:
        database_url = databases.enter_context(private_database(options.database, workdir))
        if not database_url.startswith("sqlite"):
            say(f"database {mask_url(database_url)} (private, dropped after)")
        upgrade(database_url)
        engine = make_engine(database_url)
        create_registry_standin(engine)  # Kei-MOTAS is external; the simulation stands in
        examination.create_tables(engine)
        store = RetryStore(engine)
        with store.unit() as u:
            for at in scenario.close_signals:
                u.signals.add(at, origin)
        clock_file = workdir / "clock.json"
        FileClock.write(clock_file, origin, 1.0)  # real speed while processes start
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env.update(
            {
                f"{PREFIX}DATABASE_URL": database_url,
                f"{PREFIX}BROKER_URL": broker_url,
                f"{PREFIX}CLOCK_FILE": str(clock_file),
                f"{PREFIX}BEAT_MAX_INTERVAL_S": "0.05",
                # above one slot in real seconds, so a killed worker's messages come back soon
                f"{PREFIX}VISIBILITY_TIMEOUT_S": str(max(10, int(3 * 600 / options.time_scale))),
            }
        )
        if scenario.config.new_inspection_retry_from:
            env[f"{PREFIX}NEW_INSPECTION_RETRY_FROM"] = (
                scenario.config.new_inspection_retry_from.isoformat()
            )
        sender_url = f"sqlite:///{workdir / 'sender.sqlite3'}"
        env[examination.SENDER_URL] = sender_url
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")] if p
        )
        run = Run(
            workdir,
            database_url,
            broker_url,
            clock_file,
            env,
            options.concurrency,
            options.loglevel,
            private,
        )
        # The examination side keeps each report until its receipt arrives and re-sends
        # it one slot after (simulated time): a report the broker forgot is not lost.
        run.sender = DurableSender(
            sender_url, broker_url=broker_url, queue=run.queue, clock=FileClock(clock_file).now,
            resend_after=lead,
        )  # fmt: skip
        run.start("worker")
        run.start(EXAMINATION)
        wait_ready(broker_url, run, 60)
        run.start("beat")
        FileClock.write(clock_file, origin, options.time_scale)
        clock = FileClock(clock_file)
        say(f"simulated clock from {format_instant(origin)} at x{options.time_scale:g}")
        if options.on_started:
            options.on_started(run)
        injector = build_injector(
            scenario, reports, run, store, clock, options.faults, options.fault_seed, say
        )
        _drive(
            run,
            store,
            engine,
            clock,
            events,
            reports,
            certificates,
            applications,
            options,
            say,
            injector,
        )
        report = build_report(store, engine, applications)
        late = attempt_lateness(store, BusinessCalendar(Settings()))
        held_late, others_late = held_and_others(
            late, injector.stats.held, injector.stats.hold_windows
        )
        stats = RunStats(
            faults=injector.stats,
            restarts=dict(run.restarts),
            max_lateness_slots=max((n for _c, _s, n in late), default=0),
            redeliveries=sum(o.deliveries - 1 for o in examination.received(engine)),
            wall_s=time.monotonic() - wall_started,
            outcomes_per_application=outcomes_per_application(engine),
            endings_per_chain=endings_per_chain(store),
            held_lateness_slots=held_late,
            others_lateness_slots=others_late,
        )
        return report, stats
    finally:
        if run is not None:
            run.stop_all()
            private = run.private
            run.close_broker()
            with contextlib.suppress(redis.RedisError, AMQPError, OSError):
                run.forget_queues()
        if private is not None:
            private.stop()
        if injector is not None:
            injector.close()
        if engine is not None:
            engine.dispose()
        try:
            databases.close()  # after the processes: they hold connections to it
        finally:
            if tmp is not None:
                tmp.cleanup()


class LostSends:
    """Sends the broker lost for good: a duplicate of a report that already has its
    receipt, sent when the broker was down, flushed while queued, or taken off the queue
    by a worker that was killed before it could hand it on (DESIGN 11: the sender re-sends
    only what has no receipt). Without this the run would wait for it forever, and never
    jump an idle gap again. A send counts as lost once every report has its receipt and
    no report message is queued or delivered unacked for ``GONE_AFTER_S`` real seconds.
    """

    def __init__(self, run: Run, say: Progress, recount: Callable[[], int]) -> None:
        self.run, self.say, self.recount = run, say, recount
        self.since: float | None = None

    def busy(self) -> None:
        """Something is still on its way (the queue, outcomes): the quiet time restarts."""
        self.since = None

    def all_handled(self, processed: int) -> bool:
        """True when every send was handled, or once the rest are known lost (and forgotten)."""
        if processed >= self.run.reports_sent:
            self.since = None
            return True
        if is_amqp(self.run.broker_url):
            # RabbitMQ loses no send here (no faults run on it) and hides the ones a
            # worker holds unacked (a duplicate in its buffer has a receipt already):
            # every send is waited for.
            self.since = None
            return False
        if self.run.unreceipted() or reports_in_broker(self.run):
            self.since = None
            return False
        self.since = self.since or time.monotonic()
        if time.monotonic() - self.since < GONE_AFTER_S:
            return False
        # Counted again after the broker was read: a report acked (after its commit)
        # between ``processed``'s snapshot and that read is handled, not lost.
        processed = self.recount()
        if processed >= self.run.reports_sent:
            self.since = None
            return True
        lost = self.run.reports_sent - processed
        self.say(f"{lost} send(s) of reports that had their receipt were lost by the broker")
        self.run.reports_sent, self.since = processed, None
        return True


def _drive(
    run: Run,
    store: RetryStore,
    engine: Any,
    clock: FileClock,
    events: list[tuple[datetime, int, int]],
    reports: list[Any],
    certificates: list[Certificate],
    applications: list[str],
    options: Options,
    say: Progress,
    injector: Injector,
) -> None:
    """Fire events at their simulated times, jump idle gaps, stop when all is decided."""
    started = time.monotonic()
    # Every certificate row is written up front, with its own ``available_at`` and
    # ``deleted_at``: attempts read Kei-MOTAS as of their slot, so a row written early is
    # seen exactly when it would have been, and a lagging loop cannot write one after
    # the attempt that should have seen it (the report stays the same under load).
    with Session(engine) as session, session.begin():
        session.add_all([to_row(certificates[i]) for _at, kind, i in events if kind == 0])
    pending = [event for event in events if event[1] != 0]
    settled_since: float | None = None
    gone = LostSends(run, say, lambda: snapshot(engine).processed)
    last_said = last_resend = 0.0
    processed, now = 0, clock.now()
    while True:
        if time.monotonic() - started > options.timeout_s:
            raise SimulationError(
                f"not finished after {options.timeout_s:.0f} s (simulated {format_instant(now)},"
                f" {processed} of {run.reports_sent} report sends handled,"
                f" {run.unreceipted()} without receipt)\n--- worker\n"
                + run.log_tail("worker")
                + "\n--- beat\n"
                + run.log_tail("beat")
            )
        run.supervise(say)
        now = clock.now()
        injector.poll(now)
        if time.monotonic() - last_resend > RESEND_EVERY_S:
            run.resend_due()
            last_resend = time.monotonic()
        while pending and pending[0][0] <= now:
            at, _kind, index = pending.pop(0)
            body = reports[index].model_dump(mode="json", exclude_none=True)
            run.send_report(body, sent_at=at)  # sent when detected, on time (R4a)
        seen = snapshot(engine)  # one transaction: processed reports and what they made
        processed, live, earliest, unsent = seen.processed, seen.live, seen.earliest, seen.unsent
        refused = {application_of(payload) for payload in seen.refused_payloads}
        decided = {o.application for o in examination.received(engine)}
        if time.monotonic() - last_said > 2:
            unreceipted = run.unreceipted()
            waiting = f", {unreceipted} report(s) without receipt" if unreceipted else ""
            say(
                f"{format_instant(now)[:16]} JST: {len(decided)}/{len(applications)} decided, "
                f"{live} live{waiting}"
            )
            last_said = time.monotonic()
        done = not pending and live == 0 and unsent == 0 and injector.finished
        # (run.unreceipted() last: it is only asked once everything else is settled)
        done = done and set(applications) <= decided | refused and run.unreceipted() == 0
        if done:
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since >= SETTLE_S:
                return
        else:
            settled_since = None
        nxt = min(
            [t for t in (earliest, pending[0][0] if pending else None) if t is not None],
            default=None,
        )
        if injector.next_at is not None:
            nxt = min(nxt, injector.next_at) if nxt is not None else injector.next_at
        queue_idle = unsent == 0 and queue_empty(run)
        if not queue_idle:
            gone.busy()
        idle = queue_idle and gone.all_handled(processed)
        if nxt is not None and nxt - now > IDLE_GAP and idle and run.unreceipted() == 0:
            # (never jump past a report the broker may have lost: it waits for its re-send)
            target = nxt - LEAD
            say(f"idle until {format_instant(nxt)[:16]} JST: jumping")
            FileClock.write(run.clock_file, target, clock.scale)
        time.sleep(0.02)
