"""Helpers every test that runs real processes shares: a private Redis, subprocesses, Celery.

The shared Redis on 127.0.0.1:6379 is never touched: ``private_redis`` (a session
fixture in ``tests/conftest.py``) starts a redis-server of the session's own. A
missing redis-server skips locally and fails under CI (``CI`` set).

A test's subprocesses (a Celery worker, beat, Flower, the console) go through these:

- ``start_process(args, env, log)``: its own session, stdout and stderr to ``log``;
  a ``Started`` (the ``Popen`` and its log) comes back;
- ``wait_for(probe, timeout_s, what, *watch)``: poll until ``probe`` is truthy; fail
  with the logs' tails if a watched process exits or time runs out;
- ``stop_process(started)`` / ``stop_processes(...)``: SIGTERM to the process group,
  SIGKILL after a bound.

``pipeline_env``, ``celery_command`` and ``celery_worker_args`` build the environment
and command line of a pipeline process; ``start_celery_worker`` starts a worker (and
can wait for its `` ready.`` line); ``launch_worker`` is the worker most tests want.
``one_message_held(broker_url, queue)`` takes one message off a queue as a worker does
and holds it unacknowledged for the block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.config import PREFIX
from simulation.redis_server import PrivateRedis, start_private_redis

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
APP = "retry_pipeline.tasks"
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.1
READY_LINE = " ready."  # what a Celery worker logs once it consumes
T = TypeVar("T")


@contextlib.contextmanager
def one_message_held(broker_url: str, queue: str) -> Iterator[tuple[Any, Any]]:
    """Take one message off ``queue`` as a worker does (kombu, on Redis or RabbitMQ) and
    hold it unacknowledged inside the block, which acks or rejects it; yields the kombu
    connection and the message."""
    from kombu import Connection, Consumer, Queue

    got: list[Any] = []
    with Connection(broker_url) as conn:
        bound = Queue(queue, routing_key=queue)
        with Consumer(conn, [bound], callbacks=[lambda _b, m: got.append(m)], accept=["json"]):
            conn.drain_events(timeout=5)
            assert len(got) == 1
            yield conn, got[0]


def private_redis_server() -> Iterator[PrivateRedis]:
    """A redis-server private to the caller (the body of the ``private_redis`` fixture)."""
    try:
        server = start_private_redis()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"these tests need a redis-server under CI: {exc}")
        pytest.skip(f"no redis-server to start ({exc})")
    try:
        yield server
    finally:
        server.stop()


# --- subprocesses ------------------------------------------------------------------------


@dataclass
class Started:
    """A subprocess and the file its stdout and stderr go to.

    ``offset`` is the log's size when the process started (a log may be appended to by
    a process started again): ``output`` is what this process wrote.
    """

    process: subprocess.Popen[bytes]
    log: Path
    offset: int = 0

    @property
    def name(self) -> str:
        return self.log.stem

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """What the process has written to its log so far."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def ready(self) -> bool:
        """The process (a Celery worker) has logged `` ready.``: it consumes its queues."""
        return READY_LINE in self.output()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_process(
    args: Sequence[str],
    env: dict[str, str],
    log: Path,
    *,
    cwd: Path | None = None,
    append: bool = False,
) -> Started:
    """Start ``args`` in a session of its own, stdout and stderr to ``log``.

    ``append`` keeps what ``log`` holds (a process started again after a stop); ``cwd``
    None is the test's working directory.
    """
    offset = log.stat().st_size if append and log.exists() else 0
    with log.open("ab" if append else "wb") as out:
        process = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Started(process, log, offset)


def wait_for(
    probe: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *watch: Started,
    interval_s: float = POLL_S,
) -> T:
    """Poll ``probe`` until it is truthy and return its value.

    Fails (``pytest.fail``) with the tails of the watched processes' logs as soon as one
    of them has exited, or once ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        for started in watch:
            if not started.alive():
                pytest.fail(
                    f"{started.name} exited (code {started.process.returncode}) while waiting"
                    f" for {what}\n{_tails(watch)}"
                )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{_tails(watch)}")
        time.sleep(interval_s)


def _tails(watch: Sequence[Started]) -> str:
    if len(watch) == 1:
        return watch[0].log_tail()
    return "\n".join(f"--- {s.name} ({s.log})\n{s.log_tail(40)}" for s in watch)


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """``sig`` to the process's group when it leads one (``start_process``), else to it."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        pass  # gone already


def _popen(p: Started | subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    return p.process if isinstance(p, Started) else p


def stop_processes(
    processes: Iterable[Started | subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM (warm shutdown) to all at once, then SIGKILL to any not gone in ``timeout_s``."""
    popens = [_popen(p) for p in processes]
    running = [p for p in popens if p.poll() is None]
    for process in running:
        _signal(process, signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait(timeout=timeout_s)


def stop_process(
    process: Started | subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM (warm shutdown), then SIGKILL after ``timeout_s``; nothing if it has exited."""
    stop_processes([process], timeout_s)


# --- pipeline processes: environment and Celery command lines ----------------------------


def pipeline_env(*, pythonpath: bool = True, **settings: str) -> dict[str, str]:
    """This process's environment without any ``RETRY_PIPELINE_*`` variable, plus
    ``RETRY_PIPELINE_<NAME>=value`` for each ``name=value`` of ``settings`` (``queue=``
    sets ``RETRY_PIPELINE_QUEUE``) and, with ``pythonpath``, ``PYTHONPATH`` this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + name.upper(): value for name, value in settings.items()})
    if pythonpath:
        env["PYTHONPATH"] = str(ROOT)
    return env


def celery_command(*args: str, app: str = APP) -> list[str]:
    """``python -m celery -A app *args`` (global options such as ``--quiet`` come first)."""
    return [sys.executable, "-m", "celery", "-A", app, *args]


def celery_worker_args(
    queue: str,
    name: str,
    *,
    pool: str = "solo",
    concurrency: int | None = None,
    loglevel: str | None = "INFO",
    heartbeat: bool = True,
) -> list[str]:
    """``worker`` on ``queue`` with node name ``name``, without gossip and mingle.

    ``concurrency`` None passes no ``-c``, ``loglevel`` None no ``--loglevel``;
    ``heartbeat`` False adds ``--without-heartbeat``.
    """
    args = ["worker", "-Q", queue]
    if concurrency is not None:
        args += ["-c", str(concurrency)]
    args += ["-P", pool, "--without-gossip", "--without-mingle"]
    if not heartbeat:
        args.append("--without-heartbeat")
    args += ["-n", name]
    if loglevel is not None:
        args += ["--loglevel", loglevel]
    return args


def start_celery_worker(
    queue: str,
    name: str,
    env: dict[str, str],
    log: Path,
    *,
    app: str = APP,
    cwd: Path | None = None,
    append: bool = False,
    ready_within_s: float | None = None,
    pool: str = "solo",
    concurrency: int | None = None,
    loglevel: str | None = "INFO",
    heartbeat: bool = True,
) -> Started:
    """Start ``celery -A app worker`` (``celery_worker_args``) as ``start_process`` does.

    With ``ready_within_s``, wait that long for its `` ready.`` line; a worker that does
    not get there is stopped and the test fails.
    """
    worker_args = celery_worker_args(
        queue, name, pool=pool, concurrency=concurrency, loglevel=loglevel, heartbeat=heartbeat
    )
    started = start_process(celery_command(*worker_args, app=app), env, log, cwd=cwd, append=append)
    if ready_within_s is not None:
        try:
            wait_for(started.ready, ready_within_s, f"{started.name} to be ready", started)
        except BaseException:
            stop_process(started)
            raise
    return started


# --- the worker most tests want ----------------------------------------------------------


@dataclass(kw_only=True)
class Worker(Started):
    """A ready celery worker subprocess and what it was started with."""

    queue: str
    db_url: str
    broker_url: str


def launch_worker(
    broker_url: str, workdir: Path, *, db_url: str | None = None, queue_prefix: str = "rp-dl"
) -> Worker:
    """A ready ``celery worker`` (solo pool, a unique queue, log ``workdir/worker.log``).

    Over ``db_url`` (migrated by the caller), else over a fresh migrated SQLite file in
    ``workdir`` with the Kei-MOTAS stand-in.
    """
    from tests.conftest import create_registry_standin_at

    if db_url is None:
        db_url = f"sqlite:///{workdir / 'retry.sqlite3'}"
        upgrade(db_url)
        create_registry_standin_at(db_url)  # Kei-MOTAS is external: the tests stand in for it
    queue = f"{queue_prefix}-{uuid.uuid4().hex[:10]}"
    env = pipeline_env(
        database_url=db_url,
        broker_url=broker_url,
        queue=queue,
        examination_queue=f"{queue}-examination",
    )
    started = start_celery_worker(
        queue,
        f"{queue}@%h",
        env,
        workdir / "worker.log",
        cwd=ROOT,
        concurrency=1,
        heartbeat=False,
        ready_within_s=READY_TIMEOUT_S,
    )
    return Worker(
        started.process,
        started.log,
        started.offset,
        queue=queue,
        db_url=db_url,
        broker_url=broker_url,
    )
