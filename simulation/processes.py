"""The processes of a simulation: worker and beat under a small supervisor, and the broker.

The broker is Redis (the local one, else a private redis-server; fault runs always a
private one) or RabbitMQ (an ``amqp://`` URL, as given: its queues are durable, so the
broker faults that make a Redis forget do not apply to it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from amqp.exceptions import ChannelError, NotFound
from celery import Celery

from retry_pipeline import names
from retry_pipeline.client import DurableSender, report_missing
from retry_pipeline.config import PREFIX
from retry_pipeline.errors import RetryPipelineError
from simulation.redis_server import PrivateRedis, answers, start_private_redis

MAX_RESTARTS = 30
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
EXAMINATION = "examination"  # the process of the stand-in examination side

Progress = Callable[[str], None]


class SimulationError(RetryPipelineError):
    """The simulation could not run or did not finish in time."""


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
    sender: DurableSender | None = None  # the examination side's (DESIGN 11)
    amqp: Any = field(default=None, repr=False)  # RabbitMQ: a kombu connection, kept open

    def ready_in(self, queue: str) -> int:
        """RabbitMQ: messages ``queue`` holds that no consumer has taken (a passive
        declare, on one connection kept for the run: the harness asks every loop). A
        queue not declared yet (the worker declares it) holds none."""
        if self.amqp is None:
            self.amqp = client_app(self.broker_url).connection_for_write()
        try:
            declared = self.amqp.default_channel.queue_declare(queue, passive=True)
        except NotFound:  # not declared yet; the server closed the channel: start again
            self.close_broker()
            return 0
        return int(declared.message_count)

    def forget_queues(self) -> None:
        """Delete the run's queues from the broker (they are the run's alone); on
        RabbitMQ their exchanges of the same names too (celeryconfig declares them)."""
        queues = (self.queue, self.examination_queue)
        if is_amqp(self.broker_url):
            with client_app(self.broker_url).connection_for_write() as conn:
                for name in queues:
                    for delete in ("queue_delete", "exchange_delete"):
                        with contextlib.suppress(ChannelError):  # absent: nothing to do
                            getattr(conn.channel(), delete)(name)
            return
        client = redis.Redis.from_url(self.broker_url)
        try:
            client.delete(*queues)
        finally:
            client.close()

    def close_broker(self) -> None:
        if self.amqp is not None:
            with contextlib.suppress(Exception):
                self.amqp.release()
            self.amqp = None

    def send_report(self, body: dict[str, Any], sent_at: datetime | None = None) -> None:
        """Send a report the way the examination worker does, and count it."""
        if self.sender is not None:
            # Kept (committed) before it is sent: when the broker is down, resend_due sends it.
            with contextlib.suppress(Exception):
                self.sender.send(body, taken_at=sent_at)  # R4a: as the scenario sends it
        else:
            report_missing(body, broker_url=self.broker_url, queue=self.queue, sent_at=sent_at)
        self.reports_sent += 1

    def resend_due(self) -> int:
        """The examination side re-sends reports whose receipt is overdue."""
        if self.sender is None:
            return 0
        try:
            return self.sender.resend_due()
        except Exception:  # the broker is down: the next call tries again
            return 0

    def unreceipted(self) -> int:
        """Reports sent whose receipt has not arrived (0 without a durable sender)."""
        return self.sender.counts().unreceipted if self.sender is not None else 0

    @property
    def queue(self) -> str:
        """This run's own queue: runs sharing a Redis database or a RabbitMQ never meet."""
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
        quiet = f"--without-gossip --without-mingle --loglevel {self.loglevel}".split()
        fresh = f"{os.getpid()}-{time.monotonic_ns()}@%h"  # a fresh node per (re)start
        if name == "worker":
            cmd = [
                *celery, "worker", "-Q", self.queue, "-n", f"sim-{fresh}",
                *f"-c {self.concurrency} -P prefork".split(), *quiet,
            ]  # fmt: skip
        elif name == EXAMINATION:
            # The stand-in examination side: its own app, in a process of its own.
            cmd = [
                sys.executable, "-m", "celery", "-A", "simulation.examination", "worker",
                "-Q", self.examination_queue, "-n", f"exam-{fresh}", "-P", "solo", *quiet,
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
            preexec_fn=die_with_parent,
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


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the harness dies, so nothing is left running."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def is_amqp(url: str) -> bool:
    """True for a RabbitMQ (AMQP) broker URL."""
    return urlsplit(url).scheme in AMQP_SCHEMES


def given_broker(broker_url: str | None) -> str:
    """The broker URL a run was given: the option, else the environment's, else local."""
    return broker_url or os.environ.get(f"{PREFIX}BROKER_URL") or names.DEFAULT_BROKER_URL


def refuse_amqp_faults(faults: Sequence[str], broker_url: str | None) -> None:
    """Refuse faults on RabbitMQ (ValueError, one line): they restart and flush Redis."""
    if faults and is_amqp(given_broker(broker_url)):
        raise ValueError(
            "faults run on a private Redis (they restart and flush it): "
            "leave out the amqp:// broker URL"
        )


def choose_broker(
    broker_url: str | None, redis_db: int, private_only: bool
) -> tuple[str, PrivateRedis | None]:
    """The broker to use: a RabbitMQ URL as given; else the given or local Redis on
    ``redis_db``, or a private redis-server (``private_only``: always, for fault runs)."""
    base = given_broker(broker_url)
    if is_amqp(base):
        return base, None
    if answers(base) and not private_only:
        return urlunsplit(urlsplit(base)._replace(path=f"/{redis_db}")), None
    private = start_private_redis()
    return private.url, private


def wait_ready(broker_url: str, run: Run, deadline_s: float) -> None:
    probe = Celery("sim-probe", broker=broker_url, set_as_current=False)
    probe.conf.update(accept_content=["json"], broker_connection_retry_on_startup=True)
    end = time.monotonic() + deadline_s
    waiting = {"sim-": "worker", "exam-": EXAMINATION}  # node prefix -> process name
    try:
        while time.monotonic() < end:
            for name in waiting.values():
                proc = run.processes.get(name)
                if proc is not None and proc.poll() is not None:
                    raise SimulationError(f"{name} exited at start:\n" + run.log_tail(name))
            for reply in probe.control.ping(timeout=0.5) or []:
                for node in reply:
                    for prefix in [p for p in waiting if node.startswith(p)]:
                        del waiting[prefix]
            if not waiting:
                return
        names = ", ".join(waiting.values())
        tails = "\n".join(f"--- {n}\n" + run.log_tail(n) for n in waiting.values())
        raise SimulationError(f"{names} did not answer in time:\n" + tails)
    finally:
        probe.close()


def client_app(broker_url: str) -> Celery:
    app = Celery("sim-client", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


def queue_length(run: Run) -> int:
    """Messages waiting in the run's queue."""
    if is_amqp(run.broker_url):
        return run.ready_in(run.queue)
    client = redis.Redis.from_url(run.broker_url)
    try:
        return int(client.llen(run.queue))
    finally:
        client.close()


def queue_empty(run: Run) -> bool:
    return queue_length(run) == 0


REPORT_TASKS = (names.REPORT_MISSING, names.REPORT_MISSING_BATCH)


def reports_in_broker(run: Run) -> int:
    """Report messages the broker still holds for the run: waiting in its queue, or
    delivered to a worker and not acked yet (kombu's ``unacked`` hash, where a report
    stays until its batch commits). What is in neither was handled or is lost.

    RabbitMQ shows no message without taking it: only the messages still waiting count,
    not what a worker holds unacknowledged. It loses none here (no faults run on it), so
    the harness never takes a send there for lost (``LostSends``)."""
    if is_amqp(run.broker_url):
        return run.ready_in(run.queue)
    client = redis.Redis.from_url(run.broker_url)
    try:
        waiting = [json.loads(raw) for raw in client.lrange(run.queue, 0, -1)]
        delivered = [json.loads(raw) for raw in client.hvals("unacked")]
    finally:
        client.close()
    # unacked entries are [message, exchange, routing key]; other runs may share the hash
    ours = waiting + [entry[0] for entry in delivered if entry[2] == run.queue]
    return sum(1 for message in ours if message.get("headers", {}).get("task") in REPORT_TASKS)
