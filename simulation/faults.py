"""Real faults injected into a running simulation (`simulate --faults ...`).

Moments come from a seeded random generator over the review hours of the
scenario's days, so a fault seed always injects the same faults at the same
simulated instants. Killed processes are restarted as a supervisor would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session

from retry_pipeline import names
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.clock import FileClock
from retry_pipeline.config import Settings
from retry_pipeline.policy import plan_attempts
from simulation.processes import Progress, Run, client_app, queue_empty, queue_length
from simulation.queries import count_live
from simulation.row_lock import hold_row_lock_action
from simulation.scenario import Scenario

FAULTS = (
    "kill-worker",  # SIGKILL the worker (holding countdowns, maybe mid-transaction)
    "flush-redis",  # FLUSHDB the broker database while chains are live
    "restart-redis",  # restart the private redis-server without persistence
    "kill-beat",  # SIGKILL beat and keep it down for more than two slots
    "two-beats",  # a second beat runs at the same time for three slots
    "duplicate-report",  # the same report sent again
    "duplicate-attempt",  # a chain's next attempt message delivered twice
    # the worker stops a minute before a report is sent; a minute after, with it queued,
    # Redis is flushed (first time) or restarted without persistence (second), then the
    # worker starts: the durable sender re-sends what has no receipt (DESIGN 11)
    "flush-queued-reports",
    # an outside session locks one live chain's row (SELECT ... FOR UPDATE) a minute after
    # a report and stays idle in its transaction for two slots (simulation/row_lock.py)
    "hold-row-lock",
)
POSTGRESQL_ONLY = ("hold-row-lock",)  # SQLite has no row locks
PER_FAULT = 2


@dataclass(frozen=True)
class Injection:
    """One fault at one simulated instant."""

    at: datetime
    fault: str


def parse_faults(text: str) -> tuple[str, ...]:
    """``kill-worker,flush-redis`` → a tuple of known fault names (unknown ones refused)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    return names


def faults_for(backend: str) -> tuple[str, ...]:
    """The faults a simulation on ``backend`` (``sqlite``, ``postgresql``) can inject."""
    return tuple(f for f in FAULTS if backend == "postgresql" or f not in POSTGRESQL_ONLY)


def refuse_unsupported(faults: Sequence[str], backend: str) -> None:
    """Refuse faults the ``backend`` cannot have (ValueError, one line)."""
    unsupported = [f for f in faults if f not in faults_for(backend)]
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)} needs PostgreSQL (--database postgresql): "
            "SQLite has no row locks, a writer locks the whole file"
        )


def plan_injections(
    faults: Sequence[str],
    seed: int,
    calendar: BusinessCalendar,
    start: datetime,
    end: datetime,
    per_fault: int = PER_FAULT,
) -> list[Injection]:
    """Seeded moments inside review hours between ``start`` and ``end`` (pure)."""
    rng = random.Random(seed)
    windows: list[tuple[datetime, datetime]] = []
    lo: datetime
    hi: datetime
    day = to_local(start).date()
    while day <= to_local(end).date():
        slots = calendar.slots(day)
        if slots:
            lo = max(slots[0], to_local(start))
            hi = min(slots[-1] + timedelta(minutes=calendar.settings.step_min), to_local(end))
            if lo < hi:
                windows.append((lo, hi))
        day += timedelta(days=1)
    if not windows:
        return []
    total_s = sum((hi - lo).total_seconds() for lo, hi in windows)
    out = []
    for fault in faults:
        for _ in range(per_fault):
            offset = rng.uniform(0, total_s)
            for lo, hi in windows:
                span = (hi - lo).total_seconds()
                if offset <= span:
                    out.append(Injection(lo + timedelta(seconds=offset), fault))
                    break
                offset -= span
    return sorted(out, key=lambda i: (i.at, i.fault))


QUEUED_LEAD = timedelta(minutes=1)  # the worker stops this long before a report is sent
HOLD_AFTER = timedelta(minutes=1)  # a row lock is taken this long after a report is sent


def before_reports(
    plan: list[Injection], reports: Sequence[Any], rng: random.Random
) -> list[Injection]:
    """Move each ``flush-queued-reports`` to just before a report is sent (pure).

    So reports are in the broker when it forgets; the other faults keep their moments.
    """
    moved = [
        Injection(rng.choice(reports).detected_at - QUEUED_LEAD, i.fault)
        if i.fault == "flush-queued-reports"
        else i
        for i in plan
    ]
    return sorted(moved, key=lambda i: (i.at, i.fault))


def after_reports(
    plan: list[Injection], reports: Sequence[Any], rng: random.Random
) -> list[Injection]:
    """Move each ``hold-row-lock`` to just after a report is sent (pure).

    That report's chain is live and due within a slot, so the lock lies across its slot.
    """
    moved = [
        Injection(rng.choice(reports).detected_at + HOLD_AFTER, i.fault)
        if i.fault == "hold-row-lock"
        else i
        for i in plan
    ]
    return sorted(moved, key=lambda i: (i.at, i.fault))


@dataclass
class FaultStats:
    """What was injected, and into how many live chains."""

    injected: dict[str, int] = field(default_factory=dict)
    live_at_injection: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)  # chains whose row lock was held
    hold_windows: list[tuple[datetime, datetime]] = field(default_factory=list)

    def count(self, fault: str, live: int) -> None:
        self.injected[fault] = self.injected.get(fault, 0) + 1
        self.live_at_injection[fault] = self.live_at_injection.get(fault, 0) + live


@dataclass
class Deferred:
    """An action to take once simulated time reaches ``at`` (e.g. restart beat)."""

    at: datetime
    action: Callable[[], None]


class Injector:
    """Carries out planned injections as simulated time passes them."""

    def __init__(
        self,
        plan: list[Injection],
        actions: dict[str, Callable[[datetime], bool]],
        live_count: Callable[[], int],
        say: Callable[[str], None],
    ) -> None:
        self.plan = list(plan)
        self.actions = actions
        self.live_count = live_count
        self.say = say
        self.deferred: list[Deferred] = []
        self.stats = FaultStats()
        self.cleanups: list[Callable[[], None]] = []

    def close(self) -> None:
        """Let go of what the actions hold (the row lock holder's engine)."""
        for cleanup in self.cleanups:
            cleanup()
        self.cleanups.clear()

    def defer(self, at: datetime, action: Callable[[], None]) -> None:
        """Do ``action`` once simulated time reaches ``at`` (a restart after downtime)."""
        self.deferred.append(Deferred(at, action))

    @property
    def finished(self) -> bool:
        """Nothing left to inject or undo."""
        return not self.plan and not self.deferred

    @property
    def next_at(self) -> datetime | None:
        """The next instant the injector acts at (so idle jumps do not skip it)."""
        times = [i.at for i in self.plan] + [d.at for d in self.deferred]
        return min(times) if times else None

    def poll(self, now: datetime) -> None:
        """Inject what is due; an action may decline (returns False) and is tried again."""
        for deferred in [d for d in self.deferred if d.at <= now]:
            self.deferred.remove(deferred)
            deferred.action()
        while self.plan and self.plan[0].at <= now:
            injection = self.plan[0]
            live = self.live_count()
            if not self.actions[injection.fault](now):
                return  # not now (e.g. reports in flight); try on the next poll
            self.plan.pop(0)
            self.stats.count(injection.fault, live)
            self.say(f"fault {injection.fault} at {to_local(now).isoformat()[:19]} ({live} live)")


def build_injector(
    scenario: Scenario,
    reports: list[Any],
    run: Run,
    store: RetryStore,
    clock: FileClock,
    faults: Sequence[str],
    fault_seed: int,
    say: Progress,
) -> Injector:
    """Plan the faults from the seed over the days the scenario can touch, with actions."""
    calendar = BusinessCalendar(Settings())
    signals = list(scenario.close_signals)
    start = min(r.detected_at for r in reports)
    end = max(plan_attempts(r.detected_at, calendar, signals).auto_correct_at for r in reports)
    plan = plan_injections(faults, fault_seed, calendar, start, end)
    plan = before_reports(plan, reports, random.Random(f"{fault_seed}-queued"))
    plan = after_reports(plan, reports, random.Random(f"{fault_seed}-held"))
    rng = random.Random(fault_seed)
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
        if not queue_empty(run):
            return False  # a report still in the broker is the sender's to re-send
        client = redis.Redis.from_url(run.broker_url)
        try:
            client.flushdb()
        finally:
            client.close()
        return True

    def restart_redis(_now: datetime) -> bool:
        if not queue_empty(run):
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
            chains = u.chains.due(now + step, limit=1)
        if not chains:
            return True  # nothing live to duplicate: counted, harmless
        chain = chains[0]
        sender = client_app(run.broker_url)
        eta = clock.to_real(chain.cursor.slot) if chain.cursor.slot > clock.now() else None
        for _ in range(2):  # the per-chain message, as older senders send it
            sender.send_task(
                names.ATTEMPT,
                kwargs={
                    "chain_id": chain.chain_id,
                    "attempt_no": chain.next_attempt_no,
                    "slot": chain.cursor.slot.isoformat(),
                },
                queue=run.queue,
                eta=eta,
            )
        return True

    losses = 0

    def flush_queued_reports(now: datetime) -> bool:
        run.stop("worker", kill=True)  # reports now wait in the broker

        def lose_them() -> None:
            nonlocal losses
            queued = queue_length(run)
            if losses % 2 == 0:
                client = redis.Redis.from_url(run.broker_url)
                try:
                    client.flushdb()
                finally:
                    client.close()
            else:
                run.restart_redis()
            losses += 1
            say(f"lost {queued} queued message(s) with the broker; worker starts again")
            run.start("worker")

        injector.defer(now + 2 * QUEUED_LEAD, lose_them)  # the report is queued by then
        return True

    def live_count() -> int:
        with Session(store.engine) as session, session.begin():
            return count_live(session)

    actions = {
        "kill-worker": kill_worker, "kill-beat": kill_beat, "two-beats": two_beats,
        "flush-redis": flush_redis, "restart-redis": restart_redis,
        "duplicate-report": duplicate_report, "duplicate-attempt": duplicate_attempt,
        "flush-queued-reports": flush_queued_reports,
    }  # fmt: skip
    injector = Injector(plan, actions, live_count, say)
    if "hold-row-lock" in faults:
        hold, dispose = hold_row_lock_action(
            run.database_url, step, injector.defer, injector.stats, say
        )
        actions["hold-row-lock"] = hold
        injector.cleanups.append(dispose)
    return injector
