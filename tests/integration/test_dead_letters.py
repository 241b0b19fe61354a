"""Bad input against a REAL worker: refused with a reason, kept as a dead letter, worker goes on.

One worker process (solo pool, a unique queue) runs for this module over a private
redis-server and a migrated SQLite file. Every message carries a unique marker, so
each test finds its own dead letter among the others. The issue's contract: a
malformed message never stops a worker and is never silently dropped.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner
from kombu import serialization
from kombu.exceptions import ContentDisallowed
from sqlalchemy import select
from sqlalchemy.orm import Session

import celeryconfig
from retry_pipeline import client, names
from retry_pipeline.adapters.orm import ReceiptRow
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.cli import main
from retry_pipeline.messages import MAX_PAYLOAD_BYTES
from retry_pipeline.model import DeadLetter
from simulation.redis_server import PrivateRedis
from tests.support import Worker, launch_worker, stop_process, wait_for

pytestmark = pytest.mark.redis

LETTER_TIMEOUT_S = 10.0
REPORT_TASK = names.REPORT_MISSING


# --- fixtures: a private Redis, one real worker, a client ---------------------------------------


@pytest.fixture(scope="module")
def worker(
    private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """The worker most tests share (each message carries its own marker)."""
    started = launch_worker(private_redis.url, tmp_path_factory.mktemp("dead-letters"))
    try:
        yield started
    finally:
        stop_process(started.process)


@pytest.fixture
def lone_worker(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Worker]:
    """A worker of its own, for a message that might take its worker down."""
    started = launch_worker(private_redis.url, tmp_path)
    try:
        yield started
    finally:
        stop_process(started.process)


@pytest.fixture(scope="module")
def store(worker: Worker) -> Iterator[RetryStore]:
    """The worker's database, read from the test process (overrides the conftest one)."""
    s = RetryStore.from_url(worker.db_url)
    yield s
    s.engine.dispose()


@pytest.fixture(scope="module")
def json_app(worker: Worker) -> Iterator[Celery]:
    """A client app like the examination worker's: JSON only."""
    app = Celery("dead-letter-test-client", broker=worker.broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    yield app
    app.close()


@pytest.fixture(scope="module")
def pickle_app(worker: Worker) -> Iterator[Celery]:
    """A client that sends pickle, which the pipeline must refuse by configuration."""
    app = Celery("pickle-client", broker=worker.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="pickle", accept_content=["pickle", "json"], task_ignore_result=True
    )
    yield app
    app.close()


# --- helpers --------------------------------------------------------------------------------


def marker() -> str:
    return f"DL-{uuid.uuid4().hex[:16]}"


def now_text(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + offset).isoformat()


def report(application: str, **changes: Any) -> dict[str, Any]:
    """A continuous-inspection report detected a minute ago; ``...`` drops a field."""
    body: dict[str, Any] = {
        "application": application,
        "office": "OSK01",
        "procedure": "continuous",
        "vehicle": "JA11-123456",
        "missing": ["safety"],
        "confirmed": [],
        "detected_at": now_text(-timedelta(minutes=1)),
    }
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def letters_with(store: RetryStore, mark: str) -> list[DeadLetter]:
    with store.unit() as u:
        return [d for d in u.dead_letters.newest(100_000) if mark in d.payload]


def wait_letter(store: RetryStore, worker: Worker, mark: str) -> DeadLetter:
    found = wait_for(lambda: letters_with(store, mark), LETTER_TIMEOUT_S,
                     f"a dead letter carrying {mark}", worker)  # fmt: skip
    assert len(found) == 1, f"one message, {len(found)} dead letters: {found}"
    return found[0]


def has_chain(store: RetryStore, application: str) -> bool:
    with store.unit() as u:
        return bool(u.chains.of_applications([application], lock=False))


def has_history(store: RetryStore, application: str) -> bool:
    with store.unit() as u:
        return bool(u.history.lines(application=application))


def send_args(app: Celery, queue: str, *args: Any, task: str = REPORT_TASK) -> str:
    return str(app.send_task(task, args=list(args), queue=queue).id)


def protocol2_headers(task: str, task_id: str) -> dict[str, Any]:
    """Celery task-message protocol 2 headers, as a producer in any language sends them."""
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "test@dead-letters",
        "ignore_result": True,
    }


def publish_raw(app: Celery, queue: str, body: bytes, content_type: str, task: str) -> str:
    """Publish raw bytes with a content type straight onto the queue (kombu producer)."""
    task_id = uuid.uuid4().hex
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        producer.publish(
            body,
            exchange="",
            routing_key=queue,
            content_type=content_type,
            content_encoding="utf-8",
            headers=protocol2_headers(task, task_id),
            retry=True,
        )
    return task_id


# --- bad reports: every way of point 1, each becomes a dead letter ---------------------------


def bad_reports(mark: str) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """case -> (the report task's argument, words its dead letter's reason must hold)."""
    ok_id = mark
    return {
        "wrong-json-text": (f'{{"application": "{mark}", "office": ', ("not JSON",)),
        "non-object": ([mark, "safety"], ("JSON object", "list")),
        "missing-fields": (report(ok_id, office=..., missing=...), ("office", "missing")),
        "extra-field": (report(ok_id, priority="urgent"), ("priority", "not permitted")),
        "wrong-types": (report(ok_id, missing="safety", vehicle=7), ("missing", "vehicle")),
        "unknown-procedure": (report(ok_id, procedure="renewal"), ("procedure",)),
        "unknown-kind": (report(ok_id, missing=["registration"]), ("missing.0",)),
        "empty-missing": (report(ok_id, missing=[]), ("missing", "at least 1")),
        "naive-detected-at": (
            report(ok_id, detected_at="2026-11-27T08:36:00"),
            ("detected_at", "timezone"),
        ),
        "new-without-insurer": (
            report(ok_id, procedure="new", missing=["completion"]),
            ("insurer_id", "insurance_no"),
        ),
        "continuous-with-insurer": (
            report(ok_id, insurer_id="INS-9", insurance_no="N-1"),
            ("insurer_id",),
        ),
        "oversized": (
            report(ok_id, vehicle="V" * (MAX_PAYLOAD_BYTES + 10)),
            ("exceeds", str(MAX_PAYLOAD_BYTES)),
        ),
        "application-with-space": (
            report("OSS 1", vehicle=mark),
            ("application",),
        ),
        "application-with-control-char": (
            report("OSS\x1b1", vehicle=mark),
            ("application",),
        ),
        "future-detected-at": (
            report(ok_id, detected_at=now_text(timedelta(hours=1))),
            ("detected_at", "future"),
        ),
        "stale-detected-at": (  # R4a: older than a day when it reached the pipeline
            report(ok_id, detected_at=now_text(-timedelta(days=2))),
            ("stale report (R4a)", "must check again"),
        ),
        "look-alike-application": (  # issue 12: a Cyrillic О is not an O
            report("\u041eSS-2026-000123", vehicle=mark),
            ("application", "printable ascii after nfkc", "U+041E"),
        ),
        "r1-continuous-completion": (
            report(ok_id, missing=["completion"]),
            ("continuous", "completion"),
        ),
        "r1-new-safety": (
            report(
                ok_id, procedure="new", missing=["safety"], insurer_id="I-1", insurance_no="N-1"
            ),
            ("new", "safety"),
        ),
    }


BAD_CASES = sorted(bad_reports("x"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_report_becomes_a_dead_letter(
    case: str, worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    mark = marker()
    payload, words = bad_reports(mark)[case]
    send_args(json_app, worker.queue, payload)
    letter = wait_letter(store, worker, mark)
    assert letter.task == REPORT_TASK
    for word in words:
        assert word.lower() in letter.reason.lower(), f"{letter.reason!r} lacks {word!r}"
    # The raw message is kept as it came, so an operator can see and resend it.
    assert json.loads(letter.payload) == payload
    assert not has_chain(store, mark), "a refused report must not start a chain"
    assert not has_history(store, mark), "a refused report must leave no history"
    assert worker.alive()


def test_report_sent_with_the_client_becomes_a_dead_letter(
    worker: Worker, store: RetryStore
) -> None:
    mark = marker()
    body = report(mark, missing=[])
    client.report_missing(body, broker_url=worker.broker_url, queue=worker.queue)
    letter = wait_letter(store, worker, mark)
    assert "missing" in letter.reason
    assert json.loads(letter.payload)["application"] == mark


def test_a_refused_report_gets_a_refused_receipt_beside_its_dead_letter(
    worker: Worker, store: RetryStore
) -> None:
    mark = marker()
    client.report_missing(
        report(mark, missing=[]), broker_url=worker.broker_url, queue=worker.queue
    )
    letter = wait_letter(store, worker, mark)

    def sent_receipts() -> list[ReceiptRow]:
        with Session(store.engine) as session:
            rows = session.scalars(select(ReceiptRow).where(ReceiptRow.application == mark))
            return [r for r in rows if r.sent_at is not None]  # handed to the broker

    rows = wait_for(sent_receipts, LETTER_TIMEOUT_S, f"the receipt of {mark}", worker)
    assert [(r.status, r.chain_id, r.reason) for r in rows] == [("refused", None, letter.reason)]


def test_report_as_keyword_fields_with_extra_key_becomes_a_dead_letter(
    worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    mark = marker()
    json_app.send_task(REPORT_TASK, kwargs=report(mark, urgent=True), queue=worker.queue)
    letter = wait_letter(store, worker, mark)
    assert "urgent" in letter.reason


# --- messages the worker cannot even decode or route ---------------------------------------


def test_celery_configuration_accepts_json_only() -> None:
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.task_serializer == "json"
    assert celeryconfig.result_serializer == "json"
    assert celeryconfig.event_serializer == "json"
    assert celeryconfig.result_accept_content == ["json"]
    from retry_pipeline.tasks import app

    assert list(app.conf.accept_content) == ["json"]
    assert app.conf.task_serializer == "json"


def test_pickle_content_is_refused_by_configuration() -> None:
    content_type, encoding, body = serialization.dumps({"a": 1}, serializer="pickle")
    assert content_type == "application/x-python-serialize"
    with pytest.raises(ContentDisallowed):
        serialization.loads(body, content_type, encoding, accept=celeryconfig.accept_content)


def test_pickle_message_becomes_a_dead_letter_and_is_not_run(
    worker: Worker, store: RetryStore, pickle_app: Celery
) -> None:
    mark = marker()
    valid_but_pickled = report(mark)
    pickle_app.send_task(
        REPORT_TASK, args=[valid_but_pickled], queue=worker.queue, serializer="pickle"
    )
    letter = wait_letter(store, worker, mark)
    assert "application/x-python-serialize" in letter.headers
    assert "ContentDisallowed" in letter.reason or "pickle" in letter.reason.lower()
    # A JSON report sent afterwards is processed: the pickled one was not run before it.
    after = marker()
    client.report_missing(report(after), broker_url=worker.broker_url, queue=worker.queue)
    wait_for(lambda: has_chain(store, after), LETTER_TIMEOUT_S, "the JSON report's chain", worker)
    assert not has_chain(store, mark), "a pickled report must never be run"
    assert worker.alive()


def test_unknown_task_becomes_a_dead_letter(
    worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    mark = marker()
    name = f"retry_pipeline.no_such_task_{uuid.uuid4().hex[:8]}"
    send_args(json_app, worker.queue, {"application": mark}, task=name)
    letter = wait_letter(store, worker, mark)
    assert letter.task == name
    assert "unknown task" in letter.reason
    assert name in letter.reason
    assert worker.alive()


def test_broken_json_bytes_become_a_dead_letter(
    worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    mark = marker()
    body = f'[[{{"application": "{mark}", "office": '.encode()
    publish_raw(json_app, worker.queue, body, "application/json", REPORT_TASK)
    letter = wait_letter(store, worker, mark)
    assert "application/json" in letter.headers
    assert body.decode() in letter.payload  # the raw body, as it came
    assert "decode" in letter.reason.lower() or "json" in letter.reason.lower()
    assert worker.alive()


def test_json_body_that_is_not_a_task_message_becomes_a_dead_letter(
    lone_worker: Worker, private_redis: PrivateRedis
) -> None:
    # Valid JSON with a task header, but not Celery's [args, kwargs, embed] body: what a
    # foreign producer sends by mistake. It must not take the worker down.
    store = RetryStore.from_url(lone_worker.db_url)
    app = Celery("shape-client", broker=private_redis.url, set_as_current=False)
    try:
        mark = marker()
        body = json.dumps({"application": mark, "note": "not a task body"}).encode()
        publish_raw(app, lone_worker.queue, body, "application/json", REPORT_TASK)
        letter = wait_letter(store, lone_worker, mark)
        assert letter.reason
        after = marker()
        client.report_missing(report(after), broker_url=lone_worker.broker_url,
                              queue=lone_worker.queue)  # fmt: skip
        wait_for(lambda: has_chain(store, after), LETTER_TIMEOUT_S, "the next report", lone_worker)
        assert lone_worker.alive()
    finally:
        app.close()
        store.engine.dispose()


def processed_up_to_here(worker: Worker, store: RetryStore) -> None:
    """Send a valid report and wait for its chain: the solo worker took everything sent before."""
    sentinel = marker()
    client.report_missing(report(sentinel), broker_url=worker.broker_url, queue=worker.queue)
    wait_for(lambda: has_chain(store, sentinel), LETTER_TIMEOUT_S, "the sentinel report", worker)


def test_report_with_wrong_arguments_becomes_a_dead_letter(
    worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    # Two positional arguments where the task takes one: the task cannot even be called.
    mark = marker()
    send_args(json_app, worker.queue, report(mark), "second argument")
    processed_up_to_here(worker, store)
    assert letters_with(store, mark), "a report with wrong arguments was dropped, no dead letter"
    assert not has_chain(store, mark)
    assert worker.alive()


# --- the operator's view, and the worker goes on ---------------------------------------------


def dead_letters_cli(db_url: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        main,
        ["dead-letters", "--json", "--limit", "100000"],
        env={"RETRY_PIPELINE_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture
def clean_retry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RETRY_PIPELINE_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_retry_env")
def test_worker_survives_a_burst_of_bad_messages_and_processes_a_valid_report(
    worker: Worker, store: RetryStore, json_app: Celery, pickle_app: Celery
) -> None:
    sent: dict[str, str] = {}  # marker -> case
    for case in BAD_CASES:
        mark = marker()
        payload, _ = bad_reports(mark)[case]
        send_args(json_app, worker.queue, payload)
        sent[mark] = case
    mark = marker()
    pickle_app.send_task(REPORT_TASK, args=[report(mark)], queue=worker.queue, serializer="pickle")
    sent[mark] = "pickle"
    mark = marker()
    send_args(json_app, worker.queue, {"application": mark}, task="retry_pipeline.nope")
    sent[mark] = "unknown-task"
    mark = marker()
    publish_raw(json_app, worker.queue, f'{{"{mark}": '.encode(), "application/json", REPORT_TASK)
    sent[mark] = "broken-json"

    # Sent last. The worker may take it in one micro-batch with the last bad reports
    # (retry_pipeline/report_buffer.py): their letters are stored after that batch's
    # commit, before their messages are acknowledged, so they are waited for below.
    valid = marker()
    task_id = client.report_missing(
        report(valid, missing=["safety", "insurance"]),
        broker_url=worker.broker_url,
        queue=worker.queue,
    )
    assert task_id

    wait_for(lambda: has_chain(store, valid), LETTER_TIMEOUT_S * 2, "the valid chain", worker)
    with store.unit() as u:
        chain = u.chains.of_applications([valid], lock=False).get(valid)
        history = u.history.lines(application=valid)
    assert chain is not None
    assert {k.value for k in chain.missing} == {"safety", "insurance"}
    assert chain.subject.office == "OSK01"
    assert history[0].event == "reported"
    assert chain.attempts_made <= 1  # its first slot may come while the test runs

    def missing_letters() -> list[str]:
        return sorted(case for m, case in sent.items() if not letters_with(store, m))

    deadline = time.monotonic() + LETTER_TIMEOUT_S
    while missing_letters() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert missing_letters() == [], (
        f"bad messages dropped without a dead letter: {missing_letters()}"
    )
    for m in sent:
        (letter,) = letters_with(store, m)
        assert letter.reason.strip()
        assert m in letter.payload

    listed = dead_letters_cli(worker.db_url)
    by_marker = {m: [d for d in listed if m in d["payload"]] for m in sent}
    assert all(len(found) == 1 for found in by_marker.values()), by_marker
    for found in by_marker.values():
        (entry,) = found
        assert set(entry) == {
            "id", "task", "reason", "payload", "received_at", "size", "sha256", "headers"
        }  # fmt: skip
        assert entry["reason"]
        assert entry["received_at"].endswith("+09:00")
    assert not any(valid in d["payload"] for d in listed), "the valid report is no dead letter"

    assert worker.alive(), worker.log_tail()


@pytest.mark.usefixtures("clean_retry_env")
def test_dead_letters_cli_text_output(worker: Worker, store: RetryStore, json_app: Celery) -> None:
    mark = marker()
    send_args(json_app, worker.queue, report(mark, procedure="renewal"))
    letter = wait_letter(store, worker, mark)
    result = CliRunner().invoke(
        main,
        ["dead-letters", "--limit", "100000"],
        env={"RETRY_PIPELINE_DATABASE_URL": worker.db_url},
    )
    assert result.exit_code == 0, result.output
    assert f"#{letter.id} " in result.stdout
    assert "reason:  procedure" in result.stdout
    assert mark in result.stdout


def test_batch_message_accepts_the_good_and_dead_letters_the_bad(
    worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    """retry_pipeline.report_missing_batch (client.report_missing_many): one bad report in
    a batch is kept as a dead letter; the others are accepted in the same message."""
    from retry_pipeline.client import report_missing_many

    mark = marker()
    good = [report(f"{mark}-ok-{i}") for i in range(3)]
    bad = report(f"{mark}-bad", procedure="transfer")
    report_missing_many([*good, bad], app=json_app, queue=worker.queue)
    letter = wait_letter(store, worker, f"{mark}-bad")
    assert letter.task == "retry_pipeline.report_missing_batch"
    assert "procedure" in letter.reason
    wait_for(lambda: all(has_chain(store, r["application"]) for r in good), LETTER_TIMEOUT_S,
             "the good reports' chains", worker)  # fmt: skip
    assert not has_chain(store, f"{mark}-bad")


def test_batch_message_that_is_not_a_list_becomes_a_dead_letter(
    worker: Worker, store: RetryStore, json_app: Celery
) -> None:
    mark = marker()
    send_args(json_app, worker.queue, {"not": "a list", "mark": mark},
              task="retry_pipeline.report_missing_batch")  # fmt: skip
    letter = wait_letter(store, worker, mark)
    assert "list of 1..500" in letter.reason
    assert worker.process.poll() is None  # the worker goes on
