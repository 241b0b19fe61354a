"""``retry-pipeline simulate``: a scenario through the real pipeline on a scaled clock.

Reports go as Celery messages through Redis to a real worker; a real beat ticks
on the grid of a clock ``time_scale`` times faster than real time that jumps over
idle nights; certificates are written into the Kei-MOTAS tables at their times;
a stand-in examination side receives outcomes over Celery. Attempts judge
certificates as of their slot, so the report does not depend on machine load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.registry import to_row
from retry_pipeline.adapters.store import Event, RetryStore
from retry_pipeline.calendar import format_instant
from retry_pipeline.client import report_missing
from retry_pipeline.clock import FileClock
from retry_pipeline.config import PREFIX
from retry_pipeline.errors import RetryPipelineError
from retry_pipeline.model import Certificate
from retry_pipeline.sim import examination
from retry_pipeline.sim.redis_server import PrivateRedis, answers, start_private_redis
from retry_pipeline.sim.scenario import Scenario

LEAD = timedelta(minutes=1)  # a jump lands this long before the next thing to happen
IDLE_GAP = timedelta(minutes=20)  # only gaps longer than this are jumped over
SETTLE_S = 0.5  # real seconds with nothing left to do before the run is over
QUEUE = "retry_pipeline"
EXAMINATION_QUEUE = "examination"

Progress = Callable[[str], None]


class SimulationError(RetryPipelineError):
    """The simulation could not run or did not finish in time."""


@dataclass
class Options:
    """How a simulation runs."""

    time_scale: float = 600.0
    broker_url: str | None = None  # a Redis URL; default: the local one, else a private one
    redis_db: int = 13  # our own database on a shared Redis; FLUSHDB'd before and after
    concurrency: int = 2
    timeout_s: float = 900.0
    workdir: Path | None = None  # keep the database and logs here instead of a temp dir
    on_started: Callable[[Run], None] | None = None  # hook for fault injection
    loglevel: str = "WARNING"  # of the worker and beat logs in the workdir


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
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        """Start (or restart) the worker or the beat."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        celery = [sys.executable, "-m", "celery", "-A", "retry_pipeline.tasks"]
        if name == "worker":
            node = f"sim-{os.getpid()}-{time.monotonic_ns()}@%h"
            cmd = [
                *celery, "worker", "-Q", f"{QUEUE},{EXAMINATION_QUEUE}", "-n", node,
                *f"-c {self.concurrency} -P prefork -I retry_pipeline.sim.examination".split(),
                *f"--without-gossip --without-mingle --loglevel {self.loglevel}".split(),
            ]  # fmt: skip
        else:
            schedule = str(self.workdir / "beat-schedule")
            cmd = [*celery, "beat", "-s", schedule, "--loglevel", self.loglevel]
        self.processes[name] = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
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


def _broker(options: Options) -> tuple[str, PrivateRedis | None]:
    base = options.broker_url or os.environ.get(f"{PREFIX}BROKER_URL") or "redis://127.0.0.1:6379/0"
    if answers(base):
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


def simulate(
    scenario: Scenario, options: Options, progress: Progress | None = None
) -> dict[str, Any]:
    """Run ``scenario`` and return the report (see the README for its contract)."""
    say = progress or (lambda _msg: None)
    reports = scenario.report_messages()
    certificates = sorted(scenario.certificate_models(), key=lambda c: c.available_at)
    events = sorted(
        [(r.detected_at, 1, i) for i, r in enumerate(reports)]
        + [(c.available_at, 0, i) for i, c in enumerate(certificates)]
    )
    origin = min(r.detected_at for r in reports) - LEAD
    applications = sorted({r.application for r in reports})

    tmp = None if options.workdir else tempfile.TemporaryDirectory(prefix="retry-pipeline-sim-")
    workdir = options.workdir or Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{workdir / 'simulation.sqlite3'}"
    for stale in workdir.glob("simulation.sqlite3*"):
        stale.unlink()
    (workdir / "beat-schedule").unlink(missing_ok=True)
    broker_url, private = _broker(options)
    say(f"broker {broker_url}{' (private redis-server)' if private else ''}; workdir {workdir}")
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
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
        )
        run.start("worker")
        _wait_ready(broker_url, run, 60)
        run.start("beat")
        FileClock.write(clock_file, origin, options.time_scale)
        clock = FileClock(clock_file)
        say(f"simulated clock from {format_instant(origin)} at x{options.time_scale:g}")
        if options.on_started:
            options.on_started(run)
        _drive(run, store, engine, clock, events, reports, certificates, applications, options, say)
        return _report(store, engine, applications)
    finally:
        if run is not None:
            run.stop_all()
        broker.flushdb()
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
        for name in ("worker", "beat"):
            proc = run.processes.get(name)
            if proc is not None and proc.poll() is not None:
                raise SimulationError(f"{name} died:\n" + run.log_tail(name))
        now = clock.now()
        while pending and pending[0][0] <= now:
            _, kind, index = pending.pop(0)
            if kind == 0:
                with Session(engine) as session, session.begin():
                    session.add(to_row(certificates[index]))
            else:
                body = reports[index].model_dump(mode="json", exclude_none=True)
                report_missing(body, broker_url=run.broker_url)
        with store.unit() as u:
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
        done = not pending and live == 0 and unsent == 0
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
        if nxt is not None and nxt - now > IDLE_GAP and unsent == 0 and _queue_empty(run):
            target = nxt - LEAD
            say(f"idle until {format_instant(nxt)[:16]} JST: jumping")
            FileClock.write(run.clock_file, target, clock.scale)
        time.sleep(0.02)


def _application_of(payload: str) -> str | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return body.get("application") if isinstance(body, dict) else None


def _queue_empty(run: Run) -> bool:
    client = redis.Redis.from_url(run.broker_url)
    try:
        return int(client.llen(QUEUE)) == 0
    finally:
        client.close()


def _report(store: RetryStore, engine: Any, applications: list[str]) -> dict[str, Any]:
    """One entry per application: outcome, attempt slots, decided_at, missing."""
    received = examination.received(engine)
    with store.unit() as u:
        history = u.history()
    last: dict[str, examination.ReceivedOutcome] = {}
    for outcome in received:
        prev = last.get(outcome.application)
        if prev is None or outcome.decided_at >= prev.decided_at:
            last[outcome.application] = outcome
    entries = []
    for app in applications:
        final = last.get(app)
        if final is None:
            continue
        slots = [
            h.slot
            for h in history
            if h.chain_id == outcome.chain_id
            and h.slot is not None
            and (
                h.event == Event.ATTEMPT
                or (h.event in (Event.RESUMED, Event.AUTO_CORRECTED) and h.attempt_no is not None)
            )
        ]
        entries.append(
            {
                "application": app,
                "outcome": outcome.outcome,
                "attempts": [format_instant(s) for s in slots],
                "decided_at": outcome.decided_at,
                "missing": sorted(outcome.missing),
            }
        )
    report: dict[str, Any] = {"applications": entries}
    with store.unit() as u:
        letters = u.dead_letters(10_000)
    if letters:
        report["refused"] = sorted(
            ({"task": d.task, "reason": d.reason} for d in letters), key=lambda d: d["reason"]
        )
    return report
