"""``retry-pipeline simulate``: a scenario through the real pipeline on a scaled clock.

Reports go as Celery messages through Redis to a real worker; a real beat ticks
on the grid of a clock ``time_scale`` times faster than real time that jumps over
idle nights; certificates are written into the Kei-MOTAS tables at their times;
a stand-in examination side receives outcomes over Celery. Attempts judge
certificates as of their slot, so the report does not depend on machine load.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from sqlalchemy.orm import Session

from retry_pipeline.adapters.celery_io import CeleryDispatcher
from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.registry import to_row
from retry_pipeline.adapters.store import Event, RetryStore
from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.client import report_missing
from retry_pipeline.clock import FileClock
from retry_pipeline.config import PREFIX, Settings
from retry_pipeline.errors import RetryPipelineError
from retry_pipeline.model import Certificate, HistoryEntry
from retry_pipeline.policy import plan_attempts
from retry_pipeline.service import Dispatch
from retry_pipeline.sim import examination
from retry_pipeline.sim.faults import FaultStats, Injector, plan_injections
from retry_pipeline.sim.redis_server import PrivateRedis, answers, start_private_redis
from retry_pipeline.sim.scenario import Scenario

LEAD = timedelta(minutes=1)  # a jump lands this long before the next thing to happen
IDLE_GAP = timedelta(minutes=20)  # only gaps longer than this are jumped over
SETTLE_S = 0.5  # real seconds with nothing left to do before the run is over
MAX_RESTARTS = 30

Progress = Callable[[str], None]


class SimulationError(RetryPipelineError):
    """The simulation could not run or did not finish in time."""


@dataclass
class Options:
    """How a simulation runs."""

    time_scale: float = 600.0
    broker_url: str | None = None  # a Redis URL; default: the local one, else a private one
    redis_db: int = 13  # database on a shared Redis; each run has its own queue names
    concurrency: int = 2
    timeout_s: float = 900.0
    workdir: Path | None = None  # keep the database and logs here instead of a temp dir
    on_started: Callable[[Run], None] | None = None  # hook for fault injection
    loglevel: str = "WARNING"  # of the worker and beat logs in the workdir
    faults: tuple[str, ...] = ()  # see sim/faults.py; forces a private Redis
    fault_seed: int = 0


@dataclass
class Run:
    """A running simulation: its processes and where they talk."""

    workdir: Path
    database_url: str
    broker_url: str
    clock_file: Path
    env: dict[str, str]
    concurrency: int
    loglevel: str = "WARNING"
    private: PrivateRedis | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    reports_sent: int = 0

    def send_report(self, body: dict[str, Any]) -> None:
        """Send a report the way the examination worker does, and count it."""
        report_missing(body, broker_url=self.broker_url, queue=self.queue)
        self.reports_sent += 1

    @property
    def queue(self) -> str:
        """This run's own queue: runs sharing a Redis database never meet."""
        return f"sim-{self.run_id}-retry_pipeline"

    @property
    def examination_queue(self) -> str:
        return f"sim-{self.run_id}-examination"

    def supervise(self, say: Progress) -> None:
        """Restart a worker or beat that died, as systemd or compose would."""
        for name, proc in list(self.processes.items()):
            if proc.poll() is None:
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.restarts[name] > MAX_RESTARTS:
                raise SimulationError(f"{name} keeps dying:\n" + self.log_tail(name))
            say(f"{name} exited ({proc.returncode}); restarting it")
            self.start(name)

    def restart_redis(self) -> None:
        """Restart the private redis-server on its port, without persistence."""
        if self.private is None:
            raise SimulationError("restart-redis needs the private Redis")
        port = self.private.port
        self.private.stop()
        self.private = start_private_redis(port)

    def start(self, name: str) -> None:
        """Start (or restart) the worker or a beat; one process per name."""
        self.stop(name)
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        celery = [sys.executable, "-m", "celery", "-A", "retry_pipeline.tasks"]
        if name == "worker":
            node = f"sim-{os.getpid()}-{time.monotonic_ns()}@%h"  # a fresh node per (re)start
            cmd = [
                *celery, "worker", "-Q", f"{self.queue},{self.examination_queue}", "-n", node,
                *f"-c {self.concurrency} -P prefork -I retry_pipeline.sim.examination".split(),
                *f"--without-gossip --without-mingle --loglevel {self.loglevel}".split(),
            ]  # fmt: skip
        else:
            schedule = str(self.workdir / f"{name}-schedule")
            cmd = [*celery, "beat", "-s", schedule, "--loglevel", self.loglevel]
        env = {
            **self.env,
            f"{PREFIX}QUEUE": self.queue,
            f"{PREFIX}EXAMINATION_QUEUE": self.examination_queue,
        }
        self.processes[name] = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop one process (SIGKILL with ``kill``), its children included."""
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the harness dies, so nothing is left running."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _broker(options: Options) -> tuple[str, PrivateRedis | None]:
    base = options.broker_url or os.environ.get(f"{PREFIX}BROKER_URL") or "redis://127.0.0.1:6379/0"
    if answers(base) and not options.faults:
        return urlunsplit(urlsplit(base)._replace(path=f"/{options.redis_db}")), None
    private = start_private_redis()
    return private.url, private


def _wait_ready(broker_url: str, run: Run, deadline_s: float) -> None:
    probe = Celery("sim-probe", broker=broker_url, set_as_current=False)
    probe.conf.update(accept_content=["json"], broker_connection_retry_on_startup=True)
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            proc = run.processes.get("worker")
            if proc is not None and proc.poll() is not None:
                raise SimulationError("worker exited at start:\n" + run.log_tail("worker"))
            if probe.control.ping(timeout=0.5):
                return
        raise SimulationError("worker did not answer in time:\n" + run.log_tail("worker"))
    finally:
        probe.close()


@dataclass
class RunStats:
    """What happened around the report: faults, restarts, lateness (not part of the report)."""

    faults: FaultStats
    restarts: dict[str, int]
    max_lateness_slots: int
    redeliveries: int  # outcome deliveries beyond the first (same idempotency key)
    wall_s: float
    outcomes_per_application: dict[str, int]  # distinct outcomes (keys) received
    endings_per_chain: int  # the most outbox rows any chain has (1 = never doubled)


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
    database_url = f"sqlite:///{workdir / 'simulation.sqlite3'}"
    for stale in workdir.glob("simulation.sqlite3*"):
        stale.unlink()
    for stale in workdir.glob("beat*-schedule*"):
        stale.unlink()
    broker_url, private = _broker(options)
    say(f"broker {broker_url}{' (private redis-server)' if private else ''}; workdir {workdir}")
    broker = redis.Redis.from_url(broker_url)
    run: Run | None = None
    try:
        upgrade(database_url)
        engine = make_engine(database_url)
        examination.create_tables(engine)
        store = RetryStore(engine)
        with store.unit() as u:
            for at in scenario.close_signals:
                u.add_close_signal(at, origin)
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
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")] if p
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
        run.start("worker")
        _wait_ready(broker_url, run, 60)
        run.start("beat")
        FileClock.write(clock_file, origin, options.time_scale)
        clock = FileClock(clock_file)
        say(f"simulated clock from {format_instant(origin)} at x{options.time_scale:g}")
        if options.on_started:
            options.on_started(run)
        injector = _injector(scenario, reports, run, store, clock, options, say)
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
        report = _report(store, engine, applications)
        stats = RunStats(
            faults=injector.stats,
            restarts=dict(run.restarts),
            max_lateness_slots=_max_lateness(store, BusinessCalendar(Settings())),
            redeliveries=sum(o.deliveries - 1 for o in examination.received(engine)),
            wall_s=time.monotonic() - wall_started,
            outcomes_per_application=_outcomes_per_application(engine),
            endings_per_chain=_endings_per_chain(store),
        )
        return report, stats
    finally:
        if run is not None:
            run.stop_all()
            private = run.private
        with contextlib.suppress(redis.RedisError):
            if run is not None:
                broker.delete(run.queue, run.examination_queue)
        broker.close()
        if private is not None:
            private.stop()
        if tmp is not None:
            tmp.cleanup()


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
    pending = list(events)
    settled_since: float | None = None
    last_said = 0.0
    while True:
        if time.monotonic() - started > options.timeout_s:
            raise SimulationError(
                f"not finished after {options.timeout_s:.0f} s\n--- worker\n"
                + run.log_tail("worker")
                + "\n--- beat\n"
                + run.log_tail("beat")
            )
        run.supervise(say)
        now = clock.now()
        injector.poll(now)
        while pending and pending[0][0] <= now:
            _, kind, index = pending.pop(0)
            if kind == 0:
                with Session(engine) as session, session.begin():
                    session.add(to_row(certificates[index]))
            else:
                body = reports[index].model_dump(mode="json", exclude_none=True)
                run.send_report(body)
        with store.unit() as u:  # one snapshot: processed reports and the chains they made
            processed = u.count_reports_processed()
            live = u.count_live()
            earliest = u.earliest_slot()
            unsent = u.count_pending_outcomes()
            refused = {_application_of(d.payload) for d in u.dead_letters(10_000)}
        decided = {o.application for o in examination.received(engine)}
        if time.monotonic() - last_said > 2:
            say(
                f"{format_instant(now)[:16]} JST: {len(decided)}/{len(applications)} decided, "
                f"{live} live"
            )
            last_said = time.monotonic()
        done = not pending and live == 0 and unsent == 0 and injector.finished
        done = done and set(applications) <= decided | refused
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
        idle = unsent == 0 and _queue_empty(run) and processed >= run.reports_sent
        if nxt is not None and nxt - now > IDLE_GAP and idle:
            target = nxt - LEAD
            say(f"idle until {format_instant(nxt)[:16]} JST: jumping")
            FileClock.write(run.clock_file, target, clock.scale)
        time.sleep(0.02)


def _injector(
    scenario: Scenario,
    reports: list[Any],
    run: Run,
    store: RetryStore,
    clock: FileClock,
    options: Options,
    say: Progress,
) -> Injector:
    """Plan the faults from the seed over the days the scenario can touch, with actions."""
    calendar = BusinessCalendar(Settings())
    signals = list(scenario.close_signals)
    start = min(r.detected_at for r in reports)
    end = max(plan_attempts(r.detected_at, calendar, signals).auto_correct_at for r in reports)
    plan = plan_injections(options.faults, options.fault_seed, calendar, start, end)
    rng = random.Random(options.fault_seed)
    step = timedelta(minutes=calendar.settings.step_min)
    injector: Injector

    def kill_worker(_now: datetime) -> bool:
        run.stop("worker", kill=True)
        run.start("worker")  # the supervisor restarts it at once
        return True

    def kill_beat(now: datetime) -> bool:
        run.stop("beat", kill=True)
        injector.defer(now + 2 * step + step / 2, lambda: run.start("beat"))
        return True

    def two_beats(now: datetime) -> bool:
        run.start("beat2")
        injector.defer(now + 3 * step, lambda: run.stop("beat2"))
        return True

    def flush_redis(_now: datetime) -> bool:
        if not _queue_empty(run):
            return False  # a report still in the broker is the sender's to re-send
        client = redis.Redis.from_url(run.broker_url)
        try:
            client.flushdb()
        finally:
            client.close()
        return True

    def restart_redis(_now: datetime) -> bool:
        if not _queue_empty(run):
            return False
        run.restart_redis()
        return True

    def duplicate_report(now: datetime) -> bool:
        sent = [r for r in reports if r.detected_at <= now]
        if not sent:
            return False
        again = rng.choice(sent).model_dump(mode="json", exclude_none=True)
        run.send_report(again)
        return True

    def duplicate_attempt(now: datetime) -> bool:
        with store.unit() as u:
            chains = u.due_chains(now + step, limit=1)
        if not chains:
            return True  # nothing live to duplicate: counted, harmless
        chain = chains[0]
        dispatcher = CeleryDispatcher(_client_app(run.broker_url), clock, Settings(queue=run.queue))
        for _ in range(2):
            dispatcher.send_attempt(
                Dispatch(chain.chain_id, chain.next_attempt_no, chain.cursor.slot)
            )
        return True

    def live_count() -> int:
        with store.unit() as u:
            return u.count_live()

    actions = {
        "kill-worker": kill_worker, "kill-beat": kill_beat, "two-beats": two_beats,
        "flush-redis": flush_redis, "restart-redis": restart_redis,
        "duplicate-report": duplicate_report, "duplicate-attempt": duplicate_attempt,
    }  # fmt: skip
    injector = Injector(plan, actions, live_count, say)
    return injector


def _client_app(broker_url: str) -> Celery:
    app = Celery("sim-client", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


def _outcomes_per_application(engine: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for received in examination.received(engine):
        counts[received.application] = counts.get(received.application, 0) + 1
    return counts


def _endings_per_chain(store: RetryStore) -> int:
    with store.unit() as u:
        history = u.history()
    endings: dict[str, int] = {}
    for h in history:
        if h.event in (Event.RESUMED, Event.AUTO_CORRECTED):
            endings[h.chain_id] = endings.get(h.chain_id, 0) + 1
    return max(endings.values(), default=0)


def _max_lateness(store: RetryStore, calendar: BusinessCalendar) -> int:
    """Largest delay of an attempt behind its slot, in whole slots."""
    step_s = calendar.settings.step_min * 60
    with store.unit() as u:
        history = u.history()
    late = [
        int((h.recorded_at - h.slot).total_seconds() // step_s)
        for h in history
        if h.slot is not None and h.attempt_no is not None
    ]
    return max(late, default=0)


def _application_of(payload: str) -> str | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return body.get("application") if isinstance(body, dict) else None


def _queue_empty(run: Run) -> bool:
    client = redis.Redis.from_url(run.broker_url)
    try:
        return int(client.llen(run.queue)) == 0
    finally:
        client.close()


def _final_outcomes(engine: Any) -> dict[str, examination.ReceivedOutcome]:
    """The last outcome each application received (by decision time)."""
    last: dict[str, examination.ReceivedOutcome] = {}
    for received in examination.received(engine):
        prev = last.get(received.application)
        if prev is None or received.decided_at >= prev.decided_at:
            last[received.application] = received
    return last


def _attempt_slots(history: list[HistoryEntry], chain_id: str) -> list[datetime]:
    """The grid slots of a chain's attempts, the deciding one included."""
    endings = (Event.RESUMED, Event.AUTO_CORRECTED)
    return [
        h.slot
        for h in history
        if h.chain_id == chain_id
        and h.slot is not None
        and (h.event == Event.ATTEMPT or (h.event in endings and h.attempt_no is not None))
    ]


def _report(store: RetryStore, engine: Any, applications: list[str]) -> dict[str, Any]:
    """One entry per application: outcome, attempt slots, decided_at, missing."""
    finals = _final_outcomes(engine)
    with store.unit() as u:
        history = u.history()
    entries = [
        {
            "application": app,
            "outcome": finals[app].outcome,
            "attempts": [format_instant(s) for s in _attempt_slots(history, finals[app].chain_id)],
            "decided_at": finals[app].decided_at,
            "missing": sorted(finals[app].missing),
        }
        for app in applications
        if app in finals
    ]
    report: dict[str, Any] = {"applications": entries}
    with store.unit() as u:
        letters = u.dead_letters(10_000)
    if letters:
        report["refused"] = sorted(
            ({"task": d.task, "reason": d.reason} for d in letters), key=lambda d: d["reason"]
        )
    return report
