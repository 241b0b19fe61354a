"""`make bench`: the pipeline against a raw Celery no-op task, same broker, pool and run.

Every figure is measured in this one process run, with one private redis-server,
one worker (prefork, concurrency 2) and one database, so ratios compare like with
like. Writes bench/results.json and prints a table. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import func, insert, select

from retry_pipeline import names
from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import ChainRow, HistoryRow, create_registry_standin
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar, parse_instant
from retry_pipeline.client import report_missing, report_missing_many
from retry_pipeline.clock import FileClock
from retry_pipeline.config import PREFIX, Settings
from retry_pipeline.model import Phase
from simulation.redis_server import start_private_redis

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "bench"
SLOT = parse_instant("2026-11-27T10:00:00+09:00")  # a Friday slot
RELEASE = parse_instant("2026-11-30T08:30:00+09:00")  # the next business day's opening


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, workdir: Path, database_url: str | None) -> None:
        self.workdir = workdir
        self.redis = start_private_redis()
        self.broker_url = self.redis.url
        self.database_url = database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
        upgrade(self.database_url)
        self.engine = make_engine(self.database_url)
        create_registry_standin(self.engine)  # Kei-MOTAS is external: the bench stands in
        self.store = RetryStore(self.engine)
        self.clock_file = workdir / "clock.json"
        FileClock.write(self.clock_file, SLOT - timedelta(minutes=5), 1.0)
        self.client = Celery("bench-client", broker=self.broker_url, set_as_current=False)
        self.client.conf.update(
            task_serializer="json", accept_content=["json"], task_ignore_result=True
        )
        self.r = redis.Redis.from_url(self.broker_url)
        self.worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env.update({
            f"{PREFIX}DATABASE_URL": self.database_url, f"{PREFIX}BROKER_URL": self.broker_url,
            f"{PREFIX}CLOCK_FILE": str(self.clock_file), f"{PREFIX}QUEUE": QUEUE,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")]),
        })  # fmt: skip
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "retry_pipeline.tasks", "worker", "-Q", QUEUE,
             "-c", "2", "-P", "prefork", "-I", "bench_tasks", "--without-gossip",
             "--without-mingle", "--loglevel", "WARNING", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.client.control.ping(timeout=0.5):
                return
        raise RuntimeError("bench worker did not start")

    def stop(self) -> None:
        if self.worker and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
        self.redis.stop()

    def drained(self) -> bool:
        return int(self.r.llen(QUEUE)) == 0 and int(self.r.hlen("unacked")) == 0

    def wait(self, done: Any, timeout_s: float = 600) -> float:
        start = time.monotonic()
        while not done():
            if time.monotonic() - start > timeout_s:
                raise RuntimeError("bench step did not finish in time")
            time.sleep(0.02)
        return time.monotonic() - start

    def worker_rss_kb(self) -> int:
        assert self.worker is not None
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.getpgid(int(pid)) != self.worker.pid:
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (OSError, ProcessLookupError):
                continue
        return total

    # -- figures ---------------------------------------------------------------
    def noop(self, n: int) -> tuple[float, float]:
        """No-op tasks sent and executed per second, and the raw enqueue rate alone."""
        start = time.monotonic()
        for _ in range(n):
            self.client.send_task("bench.noop", queue=QUEUE)
        sent = time.monotonic()
        self.wait(self.drained)
        return n / (time.monotonic() - start), n / (sent - start)

    def reports(self, n: int, batch: int | None) -> tuple[float, float]:
        """Reports accepted per second (durable in SQL, first attempt scheduled), and the
        broker bytes each live chain costs. ``batch``: reports per message, None = one."""
        self.clear()
        FileClock.write(self.clock_file, SLOT - timedelta(minutes=5), 1.0)
        before = self.broker_bytes()
        detected = (SLOT - timedelta(minutes=6)).isoformat()
        run = uuid.uuid4().hex[:6]
        bodies = [
            {"application": f"R{run}-{i}", "office": "B1", "procedure": "continuous",
             "vehicle": f"VR{run}-{i}", "missing": ["safety"], "detected_at": detected}
            for i in range(n)
        ]  # fmt: skip
        start = time.monotonic()
        if batch is None:
            for body in bodies:
                report_missing(body, app=self.client, queue=QUEUE)
        else:
            report_missing_many(bodies, app=self.client, queue=QUEUE, batch=batch)
        self.wait(lambda: self.live() >= n)
        rate = n / (time.monotonic() - start)
        self.wait(self.drained_but_eta)
        per_chain = (self.broker_bytes() - before) / n
        return rate, per_chain

    def drained_but_eta(self) -> bool:
        return int(self.r.llen(QUEUE)) == 0

    def live(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(ChainRow)) or 0)

    def clear(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(ChainRow.__table__.delete())
            conn.execute(HistoryRow.__table__.delete())
        self.r.delete(QUEUE)

    def broker_bytes(self) -> int:
        """Bytes the broker holds for the pipeline: its queue and the unacked (ETA) messages."""
        keys = [QUEUE, "unacked", "unacked_index"]
        return sum(int(self.r.memory_usage(k) or 0) for k in keys)

    def seed_chains(self, n: int, slot: datetime, phase: Phase) -> None:
        now = datetime.now(UTC)
        run = uuid.uuid4().hex[:6]
        rows = [
            {"chain_id": uuid.uuid4().hex, "application": f"S{run}-{i}", "office": "B1",
             "procedure": "continuous", "vehicle": f"VS{run}-{i}", "insurer_id": None,
             "insurance_no": None, "missing": ["safety"], "found": [], "confirmed": [],
             "detected_at": slot - timedelta(minutes=7), "attempts_made": 0,
             "phase": phase.value, "phase_used": 0, "next_slot": slot, "dispatched_for": None,
             "version": 1, "created_at": now, "updated_at": now}
            for i in range(n)
        ]  # fmt: skip
        with self.engine.begin() as conn:
            for start in range(0, n, 5000):
                conn.execute(insert(ChainRow), rows[start : start + 5000])

    def surge(self, n: int, slot: datetime = SLOT, phase: Phase = Phase.SAME_DAY) -> dict[str, Any]:
        self.clear()
        self.seed_chains(n, slot, phase)
        mark = datetime.now(UTC)
        FileClock.write(self.clock_file, slot, 1.0)  # the slot is now
        start = time.monotonic()
        self.client.send_task(names.ATTEMPT_SLOT, kwargs={"slot": slot.isoformat()}, queue=QUEUE)
        if phase is Phase.NEXT_DAY:
            elapsed = self.wait(lambda: self.live() == 0)
        else:
            elapsed = self.wait(lambda: self.decided(slot) >= n)
        rss = self.worker_rss_kb()
        with self.engine.connect() as conn:
            times = (
                conn.execute(
                    select(HistoryRow.recorded_at).where(
                        HistoryRow.slot == slot, HistoryRow.recorded_at >= mark - timedelta(days=1)
                    )
                )
                .scalars()
                .all()
            )
        late = sorted((t - slot).total_seconds() for t in times)
        del start
        return {
            "chains": n,
            "seconds_to_last_decided": round(elapsed, 3),
            "attempts_per_s": round(n / elapsed, 1),
            "cost_per_chain_ms": round(1000 * elapsed / n, 4),
            "lateness_p50_s": round(statistics.median(late), 3) if late else None,
            "lateness_p99_s": round(late[int(0.99 * (len(late) - 1))], 3) if late else None,
            "worker_rss_kb": rss,
        }

    def decided(self, slot: datetime) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(ChainRow).where(ChainRow.next_slot > slot)
            ) or 0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args()
    sizes = [200, 1000, 2000] if args.quick else [1_000, 10_000, 50_000]
    n_noop = 1000 if args.quick else 5000
    n_reports = 500 if args.quick else 3000
    assert BusinessCalendar(Settings()).is_slot(SLOT)
    with tempfile.TemporaryDirectory(prefix="retry-pipeline-bench-") as tmp:
        bench = Bench(Path(tmp), args.database_url)
        try:
            bench.start_worker()
            idle_rss = bench.worker_rss_kb()
            say("noop baseline ...")
            noop, enqueue = bench.noop(n_noop)
            say(f"  {noop:.0f} tasks/s; reports ...")
            single_rate, _ = bench.reports(n_reports, None)
            reports_rate, bytes_per_chain = bench.reports(n_reports * 4, 200)
            say(
                f"  {single_rate:.0f} reports/s one per message, {reports_rate:.0f} in batches "
                f"of 200; {bytes_per_chain:.0f} Redis bytes per live chain"
            )
            surges = {}
            for n in sizes:
                say(f"surge of {n} chains due in one slot ...")
                surges[n] = bench.surge(n)
                say(f"  {surges[n]}")
            say(f"release of {sizes[1]} parked chains at 08:30 ...")
            release = bench.surge(sizes[1], RELEASE, Phase.NEXT_DAY)
            say(f"  {release}")
        finally:
            bench.stop()
    mid = surges[sizes[1]]
    results = {
        "machine": f"{os.cpu_count()} cores; worker prefork concurrency 2; private redis-server; "
        + ("SQLite file" if not args.database_url else "PostgreSQL"),
        "noop_tasks_per_s": round(noop, 1),
        "enqueue_per_s": round(enqueue, 1),
        "reports_per_s": round(reports_rate, 1),
        "reports_batch_size": 200,
        "reports_single_per_s": round(single_rate, 1),
        "ratio_reports_vs_noop": round(reports_rate / noop, 3),
        "ratio_reports_vs_enqueue": round(reports_rate / enqueue, 3),
        "attempts_per_s": mid["attempts_per_s"],
        "ratio_attempts_vs_noop": round(mid["attempts_per_s"] / noop, 3),
        "surge": {str(n): s for n, s in surges.items()},
        "release_0830": release,
        "redis_bytes_per_live_chain": round(bytes_per_chain, 1),
        "worker_rss_kb_idle": idle_rss,
        "worker_rss_kb_per_10k_live_chains": round(
            (surges[sizes[-1]]["worker_rss_kb"] - surges[sizes[0]]["worker_rss_kb"])
            * 10_000
            / (sizes[-1] - sizes[0]),
            1,
        ),
        "cost_per_chain_ratio_largest_vs_smallest": round(
            surges[sizes[-1]]["cost_per_chain_ms"] / surges[sizes[0]]["cost_per_chain_ms"], 3
        ),
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))


def render(r: dict[str, Any]) -> str:
    rows = [
        ("noop_tasks_per_s (baseline)", r["noop_tasks_per_s"]),
        ("enqueue_per_s (send only)", r["enqueue_per_s"]),
        (
            "reports_per_s (batches of 200)",
            f"{r['reports_per_s']} ({r['ratio_reports_vs_enqueue']} x enqueue)",
        ),
        ("reports_single_per_s (one per message)", r["reports_single_per_s"]),
        ("attempts_per_s", f"{r['attempts_per_s']} ({r['ratio_attempts_vs_noop']} x noop)"),
        ("redis_bytes_per_live_chain", r["redis_bytes_per_live_chain"]),
        ("worker RSS per 10k live chains (kB)", r["worker_rss_kb_per_10k_live_chains"]),
        (
            "cost per chain, largest vs smallest surge",
            r["cost_per_chain_ratio_largest_vs_smallest"],
        ),
    ]
    for n, s in r["surge"].items():
        rows.append(
            (
                f"surge {n}: last decided / p50 / p99 late (s)",
                f"{s['seconds_to_last_decided']} / {s['lateness_p50_s']} / {s['lateness_p99_s']}",
            )
        )
    rel = r["release_0830"]
    rows.append(
        (f"release_0830 of {rel['chains']}: all decided (s)", rel["seconds_to_last_decided"])
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    main()
