"""Issue 9.5: refusals and decisions visible in Flower, with a real worker and a real Flower.

A refused message becomes a dead letter first (exactly one), then its task fails with the
reason as its message, so Flower's Failed tab lists it; the worker goes on. A slot's task
result names the applications it decided and how, so a search for an application id in
Flower finds its deciding slot. A batch lists its refusals per report and succeeds. The
worker runs on a clock that starts at Fri 2026-11-27 10:00 (real speed), so R4a's arrival
can be checked: a report sent at 08:37 is on time however late the worker takes it, one
sent now (10:00) for an 08:36 detection is planned from its arrival.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery

from retry_pipeline import names
from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.registry import SqlCertificateRegistry
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.client import report_missing, report_missing_many
from retry_pipeline.clock import FileClock, FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.model import Application, CertificateKind, Procedure, Report
from retry_pipeline.service.pipeline import Pipeline
from simulation.redis_server import free_port
from tests.conftest import create_registry_standin_at
from tests.e2e.test_flower import AUTH, FLOWER_STOP_S, _get
from tests.support import (
    celery_command,
    pipeline_env,
    start_celery_worker,
    start_process,
    stop_process,
)

pytest.importorskip("flower")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOKYO = ZoneInfo("Asia/Tokyo")
DEADLINE_S = 90.0
WORKER_STARTS = datetime(2026, 11, 27, 10, 0, tzinfo=TOKYO)
FRI_0955 = "2026-11-27T09:55:00+09:00"


@dataclass
class Setup:
    base: str
    queue: str
    db_url: str
    broker_url: str


@pytest.fixture
def flower_worker(broker_url: str, tmp_path: Path) -> Iterator[Setup]:

    from tests.e2e.test_flower import ROOT

    db_url = f"sqlite:///{tmp_path / 'flower.sqlite3'}"
    upgrade(db_url)
    create_registry_standin_at(db_url)  # Kei-MOTAS is external: the test stands in for it
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, WORKER_STARTS, 1.0)
    queue = f"flower-refusals-{uuid.uuid4().hex[:8]}"
    env = pipeline_env(
        database_url=db_url, broker_url=broker_url, queue=queue, clock_file=str(clock_file)
    )
    port = free_port()
    worker = start_celery_worker(queue, f"{queue}@%h", env, tmp_path / "worker.log", cwd=ROOT)
    # As in compose: flowerconfig.py (read only), credentials from a file, none on argv.
    auth_file = tmp_path / "flower_basic_auth"
    auth_file.write_text(AUTH + "\n")
    env["RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE"] = str(auth_file)
    web = start_process(
        celery_command("flower", f"--port={port}", "--address=127.0.0.1"),
        env,
        tmp_path / "flower.log",
        cwd=ROOT,
    )
    try:
        yield Setup(f"http://127.0.0.1:{port}", queue, db_url, broker_url)
    finally:
        stop_process(web, FLOWER_STOP_S)
        stop_process(worker, FLOWER_STOP_S)


def until(probe: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def tasks(setup: Setup, **query: str) -> dict[str, dict[str, Any]]:
    status, body = _get(f"{setup.base}/api/tasks?{urllib.parse.urlencode(query)}", AUTH)
    if status != 200:
        return {}
    found: dict[str, dict[str, Any]] = json.loads(body or b"{}")
    return found


def body(application: str, detected_at: str, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "application": application, "office": "OFFICE-A", "procedure": "continuous",
        "vehicle": f"V-{application}", "missing": ["safety"], "confirmed": [],
        "detected_at": detected_at,
    }  # fmt: skip
    fields.update(changes)
    return fields


def seed_chain(db_url: str, application: str) -> None:
    """A live chain detected Fri 2026-11-27 08:36, due at 08:40 (written as the pipeline does)."""
    settings = Settings()
    engine = make_engine(db_url)
    try:
        pipeline = Pipeline(
            RetryStore(engine), SqlCertificateRegistry(engine, settings),
            BusinessCalendar(settings), FixedClock(datetime(2026, 11, 27, 8, 37, tzinfo=TOKYO)),
            dispatcher=_NoBroker(), gateway=_NoBroker(),
        )  # fmt: skip
        subject = Application(application, "OFFICE-A", Procedure.CONTINUOUS, f"V-{application}")
        fri_0836 = datetime(2026, 11, 27, 8, 36, tzinfo=TOKYO)
        pipeline.accept_report(
            Report(subject, frozenset({CertificateKind.SAFETY}), frozenset(), fri_0836)
        )
    finally:
        engine.dispose()


class _NoBroker:
    def send_slot(self, slot: datetime) -> None:
        pass

    def deliver(self, outcomes: Any) -> None:
        pass


def letters_about(db_url: str, marker: str) -> list[str]:
    store = RetryStore.from_url(db_url)
    try:
        with store.unit() as u:
            return [d.reason for d in u.dead_letters.newest(1000) if marker in d.payload]
    finally:
        store.engine.dispose()


def test_refusals_fail_in_flower_and_a_slot_names_what_it_decided(flower_worker: Setup) -> None:
    setup = flower_worker
    until(lambda: _get(f"{setup.base}/healthcheck", AUTH)[0] == 200, "Flower to start")
    mark = uuid.uuid4().hex[:8]
    live = f"FLR-{mark}-LIVE"
    seed_chain(setup.db_url, live)
    fri = "2026-11-27T08:38:00+09:00"
    refused = {
        "r1": body(f"FLR-{mark}-R1", fri, missing=["completion"]),
        "conflict": body(live, fri, office="OFFICE-B"),
        "look-alike": body(f"\u041eSS-{mark}", fri, vehicle=f"V-{mark}-CYR"),
    }
    for message in refused.values():
        report_missing(message, broker_url=setup.broker_url, queue=setup.queue)
    client = Celery("flower-refusals", broker=setup.broker_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    try:
        # The batch comes before the slot (one solo worker, in order): the chain is live.
        report_missing_many(
            [body(live, fri, vehicle="V-OTHER"), body(f"FLR-{mark}-OK", FRI_0955)],
            app=client, queue=setup.queue,
        )  # fmt: skip
        # R4a: detected 08:36; one sent at 08:37 (waited in the broker), one sent now.
        detected = "2026-11-27T08:36:00+09:00"
        report_missing(body(f"FLR-{mark}-QUEUED", detected), app=client, queue=setup.queue,
                       sent_at=datetime(2026, 11, 27, 8, 37, tzinfo=TOKYO))  # fmt: skip
        report_missing(body(f"FLR-{mark}-LATE", detected), app=client, queue=setup.queue)
        # The worker's clock is past 2026-11-27, so the chain catches up on every slot
        # (each batch sends the next slot's message) and is decided at 09:30.
        client.send_task(names.ATTEMPT_SLOT, kwargs={"slot": "2026-11-27T08:40:00+09:00"},
                         queue=setup.queue)  # fmt: skip
    finally:
        client.close()

    # Failed tab: the three refused reports, each with its reason as the message.
    def failed() -> list[dict[str, Any]]:
        found = [t for t in tasks(setup, state="FAILURE").values() if mark in str(t.get("args"))]
        return found if len(found) >= 3 else []

    exceptions = sorted(str(t["exception"]) for t in until(failed, "three failed reports"))
    assert all("refused (dead letter #" in t for t in exceptions), exceptions
    assert any("continuous inspection does not retry completion" in e for e in exceptions)
    assert any(
        f"conflicting report (R4): {live} has a live chain with office OFFICE-A "
        "(this report: OFFICE-B)" in e
        for e in exceptions
    )
    assert any("printable ASCII after NFKC" in e and "U+041E" in e for e in exceptions)

    # Searching Flower for the live application finds every slot that tried it, and the
    # deciding one says how it was decided.
    def slot_tasks() -> list[tuple[str, str]]:
        found = [
            (str(t.get("kwargs")), str(t.get("result"))) for t in tasks(setup, search=live).values()
            if t.get("name") == names.ATTEMPT_SLOT and t.get("state") == "SUCCESS"
        ]  # fmt: skip
        return found if len({k for k, _ in found}) >= 6 else []

    slots = until(slot_tasks, "six slots in a search for the application")
    first = [r for k, r in slots if "08:40:00" in k and live in r]
    deciding = [r for k, r in slots if "09:30:00" in k and live in r]
    assert first and deciding, slots
    assert f"'{live}': 'next 2026-11-27T08:50:00+09:00'" in first[0]
    assert "'slot': '2026-11-27T08:40:00+09:00'" in first[0]
    assert "'applications_total': " in first[0]
    assert f"'{live}': 'auto_corrected: safety'" in deciding[0]

    # The batch succeeds and lists its refusal by index; its good report is accepted.
    def batch() -> list[dict[str, Any]]:
        return [
            t for t in tasks(setup, taskname=names.REPORT_MISSING_BATCH).values()
            if t.get("state") == "SUCCESS" and mark in str(t.get("args"))
        ]  # fmt: skip

    (done,) = until(batch, "the batch task")
    assert "'accepted': 1, 'refused': 1" in done["result"]
    assert "'index': 0" in done["result"] and "vehicle V-" in done["result"]

    # Exactly one dead letter per refused message (the failure kept no second one).
    for name, marker in (("r1", f"FLR-{mark}-R1"), ("look-alike", f"V-{mark}-CYR")):
        assert len(letters_about(setup.db_url, marker)) == 1, name
    conflict_letters = letters_about(setup.db_url, live)
    assert len(conflict_letters) == 2  # the single report and the batch's

    # R4a through the broker: the sent-at header decides the arrival.
    def reported(application: str) -> Any:
        store = RetryStore.from_url(setup.db_url)
        try:
            with store.unit() as u:
                lines = [h for h in u.history.lines(application=application)]
        finally:
            store.engine.dispose()
        return [h for h in lines if h.event == "reported"]

    (queued,) = until(lambda: reported(f"FLR-{mark}-QUEUED"), "the queued report")
    assert (format_instant(queued.slot), queued.late_s) == ("2026-11-27T08:40:00+09:00", None)
    (late,) = until(lambda: reported(f"FLR-{mark}-LATE"), "the late report")
    assert format_instant(late.slot) == "2026-11-27T10:10:00+09:00"
    assert late.late_s is not None and late.late_s >= 84 * 60
    assert "R4a: planned from its arrival" in late.detail
