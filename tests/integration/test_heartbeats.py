"""Heartbeats (issue 12): a real worker and a real beat record them; ``health`` reads them.

The worker and beat run as subprocesses over a private redis-server and a migrated
SQLite file, on a shared clock file so the test can move time past a slot without
waiting. ``retry-pipeline health`` exits 0 while they beat and 1 once beat has missed
two ticks or no worker answered within a slot.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import FileClock
from retry_pipeline.config import Settings
from retry_pipeline.heartbeat import BEAT, WORKER, Beat, check, record
from simulation.redis_server import PrivateRedis
from tests.support import (
    celery_command,
    pipeline_env,
    private_redis_server,
    start_celery_worker,
    start_process,
    stop_process,
    wait_for,
)

TOKYO = ZoneInfo("Asia/Tokyo")
START = datetime(2026, 11, 27, 8, 45, tzinfo=TOKYO)  # a Friday, inside review hours
DEADLINE_S = 45.0


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    yield from private_redis_server()  # a server of this module's own (tests/support.py)


def env_for(workdir: Path, broker_url: str) -> dict[str, str]:
    return pipeline_env(
        database_url=f"sqlite:///{workdir / 'retry.sqlite3'}",
        broker_url=broker_url,
        clock_file=str(workdir / "clock.json"),
        queue=f"hb-{workdir.name}",
        heartbeat_s="0.2",
        beat_max_interval_s="0.2",
    )


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retry_pipeline.cli", "health", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def rows(db_url: str) -> dict[str, str]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(text("SELECT name, kind FROM heartbeat"))}
    finally:
        engine.dispose()


def test_worker_and_beat_heartbeats_and_health(private_redis: PrivateRedis, tmp_path: Path) -> None:
    env = env_for(tmp_path, private_redis.url)
    db_url = env["RETRY_PIPELINE_DATABASE_URL"]
    upgrade(db_url)
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, START, 1.0)
    before = health(env)
    assert before.returncode == 1  # nothing has beaten yet
    assert "beat has never recorded a heartbeat" in before.stderr
    assert "no worker answered within a slot" in before.stderr
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    worker = start_celery_worker(
        env["RETRY_PIPELINE_QUEUE"], "hb@%h", env, worker_log, cwd=tmp_path
    )
    beat_args = ["beat", "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"]
    beat = start_process(celery_command(*beat_args), env, beat_log, cwd=tmp_path)
    try:
        wait_for(
            lambda: {BEAT, WORKER} <= set(rows(db_url).values()),
            DEADLINE_S,
            "heartbeats of beat and the worker",
            worker,
            beat,
        )
        ok = health(env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "healthy" in ok.stdout
        assert any(name.startswith("worker:hb@") for name in rows(db_url))
        # Beat stops; 21 minutes later on the clock it has missed two ticks.
        stop_process(beat)
        FileClock.write(clock_file, START + timedelta(minutes=21), 1.0)
        # The worker keeps beating on the moved clock, so only beat is unhealthy.
        wait_for(
            lambda: health(env, "--only", "worker").returncode == 0, DEADLINE_S, "worker", worker
        )
        late = health(env)
        assert late.returncode == 1
        assert "beat has missed two ticks" in late.stderr
        assert "no worker answered" not in late.stderr
        assert health(env, "--only", "beat").returncode == 1
        # The worker stops too; a slot later nobody answers.
        stop_process(worker)
        FileClock.write(clock_file, START + timedelta(minutes=32), 1.0)
        gone = health(env, "--only", "worker")
        assert gone.returncode == 1
        assert "no worker answered within a slot" in gone.stderr
    finally:
        stop_process(beat)
        stop_process(worker)


# -- the rules of `check`, on recorded rows ------------------------------------------------


@pytest.fixture
def calendar() -> BusinessCalendar:
    return BusinessCalendar(Settings())


def beat_row(at: datetime, tick: datetime | None, started: datetime | None = None) -> Beat:
    return Beat(BEAT, BEAT, at, started or START - timedelta(hours=1), tick)


def worker_row(at: datetime) -> Beat:
    return Beat("worker:w1@host", WORKER, at, START - timedelta(hours=1), None)


def test_check_passes_with_fresh_heartbeats(calendar: BusinessCalendar) -> None:
    now = START + timedelta(minutes=5)  # 08:50
    beats = [beat_row(now, START - timedelta(minutes=5)), worker_row(now)]  # tick at 08:40
    assert check(beats, calendar, now).problems == []


def test_beat_alive_but_two_ticks_not_sent_is_a_problem(calendar: BusinessCalendar) -> None:
    now = datetime(2026, 11, 27, 9, 1, tzinfo=TOKYO)  # ticks due 08:50, 09:00
    beats = [beat_row(now, datetime(2026, 11, 27, 8, 40, tzinfo=TOKYO)), worker_row(now)]
    problems = check(beats, calendar, now).problems
    assert len(problems) == 1 and "beat has missed two ticks" in problems[0]
    # one missed tick is not yet two
    one = [beat_row(now, datetime(2026, 11, 27, 8, 50, tzinfo=TOKYO)), worker_row(now)]
    assert check(one, calendar, now).problems == []


def test_nights_and_weekends_need_no_ticks(calendar: BusinessCalendar) -> None:
    saturday = datetime(2026, 11, 28, 11, 0, tzinfo=TOKYO)
    beats = [beat_row(saturday, datetime(2026, 11, 27, 16, 0, tzinfo=TOKYO)), worker_row(saturday)]
    assert check(beats, calendar, saturday).problems == []


def test_record_upserts_one_row_per_process(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        record(engine, "worker:a", WORKER, START, started_at=START)
        record(engine, "worker:a", WORKER, START + timedelta(seconds=30), started_at=START)
        record(engine, BEAT, BEAT, START, started_at=START, last_tick_at=START)
        with engine.connect() as conn:
            got = conn.execute(text("SELECT name, kind FROM heartbeat ORDER BY name")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in got] == [(BEAT, BEAT), ("worker:a", WORKER)]
