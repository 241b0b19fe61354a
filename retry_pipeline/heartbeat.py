"""Heartbeats in SQL (issue 12): beat and every worker say they are alive; ``health`` reads them.

- Each worker's consumer records ``worker:<hostname>`` every ``HEARTBEAT_S`` seconds
  while it is connected to the broker (a Celery consumer bootstep, stopped and started
  again with the connection).
- Beat records ``beat`` while its loop turns, and when it sends a grid tick
  (``HeartbeatScheduler``, ``beat_scheduler`` in celeryconfig.py).

Writes happen on a small thread, so a slow database never stalls the worker's
consumer or beat's loop; a failed write is logged and tried again next time.
Instants are on the pipeline's clock (the scaled clock in simulations).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import bootsteps
from celery.beat import PersistentScheduler
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from retry_pipeline import names
from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.adapters.orm import HeartbeatRow
from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.clock import Clock, clock_from
from retry_pipeline.schedules import grid_ticks

log = logging.getLogger(__name__)
BEAT = "beat"
WORKER = "worker"
GRID_TICK_TASK = names.TICK


def record(
    engine: Engine,
    name: str,
    kind: str,
    now: datetime,
    *,
    started_at: datetime,
    last_tick_at: datetime | None = None,
    detail: str = "",
) -> None:
    """Upsert one heartbeat row (portable: update, else insert)."""
    values: dict[str, Any] = {"beat_at": now, "detail": detail[:200]}
    if last_tick_at is not None:
        values["last_tick_at"] = last_tick_at
    sessions = make_sessions(engine)
    with sessions() as session, session.begin():
        done = session.execute(update(HeartbeatRow).where(HeartbeatRow.name == name).values(values))
        if getattr(done, "rowcount", 0):
            return
    try:
        with sessions() as session, session.begin():
            session.add(HeartbeatRow(name=name, kind=kind, started_at=started_at, **values))
    except IntegrityError:  # another process inserted it meanwhile: update next time
        pass


class Pulse:
    """Calls ``beat()`` every ``interval_s`` real seconds on a daemon thread until stopped."""

    def __init__(self, interval_s: float, beat: Callable[[], None], name: str) -> None:
        self.interval_s = interval_s
        self._beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
            except Exception as exc:  # the database may be down; the next beat tries again
                log.warning("heartbeat not recorded: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.interval_s)


def _service_parts() -> tuple[Engine, Clock, float]:
    """Its own engine without a pool (nothing for a forked pool process to inherit)."""
    from retry_pipeline.tasks import settings

    s = settings()
    return make_engine(s.database_url, poolclass=NullPool), clock_from(s.clock_file), s.heartbeat_s


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: ``worker:<hostname>`` while the consumer is connected to the broker."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.pulse: Pulse | None = None

    def start(self, parent: Any) -> None:
        engine, clock, interval = _service_parts()
        name = f"{WORKER}:{parent.hostname}"
        started = clock.now()

        def beat() -> None:
            record(engine, name, WORKER, clock.now(), started_at=started)

        self.pulse = Pulse(interval, beat, "worker-heartbeat")
        self.pulse.start()

    def stop(self, parent: Any) -> None:
        if self.pulse is not None:
            self.pulse.stop()
            self.pulse = None

    shutdown = stop


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's file scheduler, recording beat's heartbeat and each grid tick it sends."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        self._loop_at = time.monotonic()
        self._tick_sent: datetime | None = None
        engine, clock, interval = _service_parts()
        self._clock = clock
        started = clock.now()
        stale_after = max(interval, 3 * float(self.max_interval or 5))

        def beat() -> None:
            if time.monotonic() - self._loop_at > stale_after:
                return  # the loop is stuck: stay silent so that `health` sees it
            record(
                engine, BEAT, BEAT, clock.now(), started_at=started, last_tick_at=self._tick_sent
            )

        self._pulse = Pulse(interval, beat, "beat-heartbeat")
        self._pulse.start()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self._loop_at = time.monotonic()
        return float(super().tick(*args, **kwargs))

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        super().apply_entry(entry, producer=producer)
        if getattr(entry, "task", None) == GRID_TICK_TASK:
            self._tick_sent = self._clock.now()

    def close(self) -> None:
        pulse = getattr(self, "_pulse", None)
        if pulse is not None:
            pulse.stop()
        super().close()


# -- reading them: retry-pipeline health ------------------------------------------------


@dataclass(frozen=True)
class Beat:
    name: str
    kind: str
    beat_at: datetime
    started_at: datetime
    last_tick_at: datetime | None


@dataclass(frozen=True)
class Health:
    now: datetime
    beat: Beat | None
    workers: list[Beat]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def heartbeats(session: Session) -> list[Beat]:
    rows = session.scalars(select(HeartbeatRow).order_by(HeartbeatRow.name))
    return [Beat(r.name, r.kind, r.beat_at, r.started_at, r.last_tick_at) for r in rows]


def check(
    beats: list[Beat], calendar: BusinessCalendar, now: datetime, only: str | None = None
) -> Health:
    """Beat missed two ticks, or no worker answered within a slot: each is a problem."""
    step = timedelta(minutes=calendar.settings.step_min)
    beat = next((b for b in beats if b.kind == BEAT), None)
    workers = [b for b in beats if b.kind == WORKER]
    problems: list[str] = []
    if only in (None, BEAT):
        if beat is None:
            problems.append("beat has never recorded a heartbeat")
        elif now - beat.beat_at > 2 * step:
            problems.append(f"beat has missed two ticks: last heartbeat {_ago(now, beat.beat_at)}")
        else:
            due = [t for t in grid_ticks(calendar, to_local(now).date()) if t <= now]
            sent = beat.last_tick_at
            if len(due) >= 2 and (sent is None or sent < due[-2]) and beat.started_at < due[-2]:
                last = "never" if sent is None else _ago(now, sent)
                problems.append(f"beat has missed two ticks: last grid tick sent {last}")
    if only in (None, WORKER):
        fresh = [w for w in workers if now - w.beat_at <= step]
        if not fresh:
            latest = max((w.beat_at for w in workers), default=None)
            when = "never" if latest is None else _ago(now, latest)
            problems.append(f"no worker answered within a slot (last heartbeat {when})")
    return Health(now, beat, workers, problems)


def _ago(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    return f"{seconds} s ago ({to_local(then).isoformat(timespec='seconds')})"
