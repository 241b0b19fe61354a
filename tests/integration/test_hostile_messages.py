"""Issue 12: hostile messages refused before decoding; dead letters that always land (PostgreSQL).

One real worker (solo pool) over a private redis-server and a fresh PostgreSQL database.
Compressed bodies and bodies over RETRY_PIPELINE_MAX_BODY_BYTES are kept as dead letters
(headers, the first 64 KiB, size, SHA-256) without being decoded: the worker's main
process peak RSS (VmHWM) stays flat while a stream of zlib bombs arrives, and the queue
drains (every message acknowledged). A message whose dead letter cannot be stored is
not acknowledged: it comes back and lands once the database takes it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, text

from retry_pipeline import names
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.model import LETTER_HEAD_BYTES, DeadLetter
from simulation.redis_server import PrivateRedis
from tests.integration.test_dead_letters import protocol2_headers
from tests.support import Worker, launch_worker, stop_process, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

REPORT_TASK = names.REPORT_MISSING
CAP = 1_048_576  # the default RETRY_PIPELINE_MAX_BODY_BYTES
BOMB_UNPACKED = 768 * 1024 * 1024  # what one bomb inflates to
BOMBS = 4
RSS_GROWTH_LIMIT = 150 * 1024 * 1024  # far below one bomb's inflated size
LETTER_TIMEOUT_S = 60.0


def fresh_pg_url(server_url: str) -> str:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(server_url)
    return server_url


@pytest.fixture(scope="module")
def pg_worker(
    private_redis: PrivateRedis,
    postgres_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    db_url = fresh_pg_url(postgres_server_url)
    started = launch_worker(
        private_redis.url,
        tmp_path_factory.mktemp("hostile"),
        db_url=db_url,
        queue_prefix="rp-hostile",
    )
    try:
        yield started
    finally:
        stop_process(started)


@pytest.fixture(scope="module")
def pg_store(pg_worker: Worker) -> Iterator[RetryStore]:
    s = RetryStore.from_url(pg_worker.db_url)
    yield s
    s.engine.dispose()


@pytest.fixture(scope="module")
def app(pg_worker: Worker) -> Iterator[Celery]:
    client = Celery("hostile-client", broker=pg_worker.broker_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A zlib body of a few hundred KB (under the size cap) inflating to 768 MB."""
    packer = zlib.compressobj(9)
    zeros = bytes(16 * 1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(BOMB_UNPACKED // len(zeros))]
    return b"".join(parts) + packer.flush()


def publish(
    app: Celery, queue: str, body: bytes, mark: str, *, content_type: str = "application/json",
    compression: str | None = None,
) -> None:  # fmt: skip
    headers = protocol2_headers(REPORT_TASK, mark)
    if compression is not None:
        headers["compression"] = compression
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body, exchange="", routing_key=queue, content_type=content_type,
            content_encoding="binary" if content_type != "application/json" else "utf-8",
            headers=headers, retry=True,
        )  # fmt: skip


def letters_marked(store: RetryStore, mark: str) -> list[DeadLetter]:
    with store.unit() as u:
        return [d for d in u.dead_letters.newest(100_000) if mark in d.headers + d.payload]


def wait_letter(store: RetryStore, worker: Worker, mark: str) -> DeadLetter:
    found = wait_for(lambda: letters_marked(store, mark), LETTER_TIMEOUT_S,
                     f"a dead letter carrying {mark}", worker)  # fmt: skip
    assert len(found) == 1, found
    return found[0]


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def queue_drained(worker: Worker) -> bool:
    client = redis.Redis.from_url(worker.broker_url)
    try:
        return client.llen(worker.queue) == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def stored_body(store: RetryStore, letter_id: int) -> bytes:
    with store.engine.connect() as conn:
        value = conn.execute(
            text("SELECT body FROM dead_letter WHERE id = :id"), {"id": letter_id}
        ).scalar_one()
    return bytes(value)


# --- compressed bodies: never inflated -------------------------------------------------------


def test_a_stream_of_zlib_bombs_is_refused_before_decoding_and_memory_stays_flat(
    pg_worker: Worker, pg_store: RetryStore, app: Celery, bomb: bytes
) -> None:
    assert len(bomb) < CAP, "the bomb must pass the size cap: only its compression refuses it"
    before = peak_rss(pg_worker.process.pid)
    marks = [f"BOMB-{uuid.uuid4().hex[:12]}" for _ in range(BOMBS)]
    for mark in marks:
        publish(app, pg_worker.queue, bomb, mark, compression="application/x-gzip")
    letters = [wait_letter(pg_store, pg_worker, mark) for mark in marks]
    wait_for(lambda: queue_drained(pg_worker), LETTER_TIMEOUT_S, "the queue to drain", pg_worker)
    growth = peak_rss(pg_worker.process.pid) - before
    assert growth < RSS_GROWTH_LIMIT, f"worker peak RSS grew by {growth >> 20} MiB"
    digest = hashlib.sha256(bomb).hexdigest()
    for letter in letters:
        assert letter.task == REPORT_TASK
        assert "compress" in letter.reason and "before decoding" in letter.reason
        assert letter.size == len(bomb)
        assert letter.sha256 == digest
        assert json.loads(letter.headers)["compression"] == "application/x-gzip"
        assert stored_body(pg_store, letter.id) == bomb[:LETTER_HEAD_BYTES]
    assert pg_worker.alive()


def test_a_body_over_the_cap_is_refused_before_decoding(
    pg_worker: Worker, pg_store: RetryStore, app: Celery
) -> None:
    mark = f"BIG-{uuid.uuid4().hex[:12]}"
    report = {"application": mark, "office": "OSK01", "vehicle": "V" * (3 * CAP)}
    body = json.dumps([[report], {}, {"callbacks": None}]).encode()
    publish(app, pg_worker.queue, body, mark)
    letter = wait_letter(pg_store, pg_worker, mark)
    assert "MAX_BODY_BYTES=1048576" in letter.reason and "before decoding" in letter.reason
    assert letter.size == len(body)
    assert letter.sha256 == hashlib.sha256(body).hexdigest()
    assert stored_body(pg_store, letter.id) == body[:LETTER_HEAD_BYTES]
    assert len(letter.payload.encode()) <= LETTER_HEAD_BYTES
    wait_for(lambda: queue_drained(pg_worker), LETTER_TIMEOUT_S, "the queue to drain", pg_worker)


# --- dead letters that always land on PostgreSQL ---------------------------------------------


def test_a_pickle_body_lands_as_a_dead_letter_on_postgresql(
    pg_worker: Worker, pg_store: RetryStore, app: Celery
) -> None:
    mark = f"PICKLE-{uuid.uuid4().hex[:12]}"
    body = pickle.dumps([[{"application": mark}], {}, {}], protocol=4)
    assert b"\x00" in body
    publish(app, pg_worker.queue, body, mark, content_type="application/x-python-serialize")
    letter = wait_letter(pg_store, pg_worker, mark)
    assert "ContentDisallowed" in letter.reason
    assert stored_body(pg_store, letter.id) == body  # every byte, NULs included
    assert letter.sha256 == hashlib.sha256(body).hexdigest()
    assert "\\x00" in letter.payload and mark in letter.payload
    wait_for(lambda: queue_drained(pg_worker), LETTER_TIMEOUT_S, "the queue to drain", pg_worker)


def test_a_json_body_with_nul_bytes_lands_as_a_dead_letter_on_postgresql(
    pg_worker: Worker, pg_store: RetryStore, app: Celery
) -> None:
    mark = f"NUL-{uuid.uuid4().hex[:12]}"
    body = f'[[{{"application": "{mark}\x00"'.encode() + b"\x00\xff\xfe"
    publish(app, pg_worker.queue, body, mark)
    letter = wait_letter(pg_store, pg_worker, mark)
    assert stored_body(pg_store, letter.id) == body
    assert letter.size == len(body)


@contextmanager
def refusing_letters(db_url: str, column: str, mark: str) -> Iterator[None]:
    """The database refuses every dead letter whose ``column`` holds ``mark`` (a trigger)."""
    ddl = f"""
        CREATE FUNCTION refuse_letter() RETURNS trigger AS $$
        BEGIN
          IF strpos(NEW.{column}, '{mark}') > 0 THEN RAISE EXCEPTION 'disk full (test)'; END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER refuse_letter BEFORE INSERT ON dead_letter
          FOR EACH ROW EXECUTE FUNCTION refuse_letter();
    """
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(ddl)
        yield
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS refuse_letter ON dead_letter")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS refuse_letter()")
        engine.dispose()


def failed_stores(worker: Worker) -> int:
    return worker.log.read_text(errors="replace").count("disk full (test)")


def test_a_message_whose_dead_letter_cannot_be_stored_is_not_acknowledged(
    pg_worker: Worker, pg_store: RetryStore, app: Celery
) -> None:
    mark = f"NOSTORE-{uuid.uuid4().hex[:12]}"
    with refusing_letters(pg_worker.db_url, "headers", mark):
        before = failed_stores(pg_worker)
        publish(app, pg_worker.queue, b"\x00" * (CAP + 1), mark)
        # The worker tried at least twice: the message came back after the first failure.
        wait_for(lambda: failed_stores(pg_worker) >= before + 2, LETTER_TIMEOUT_S,
                 "two failed attempts to store the letter", pg_worker)  # fmt: skip
        assert not letters_marked(pg_store, mark)
    letter = wait_letter(pg_store, pg_worker, mark)
    assert letter.size == CAP + 1
    wait_for(lambda: queue_drained(pg_worker), LETTER_TIMEOUT_S, "the queue to drain", pg_worker)


def test_a_failed_task_whose_dead_letter_cannot_be_stored_is_requeued(
    pg_worker: Worker, pg_store: RetryStore, app: Celery
) -> None:
    mark = f"NOSTORE-TASK-{uuid.uuid4().hex[:12]}"
    with refusing_letters(pg_worker.db_url, "payload", mark):
        before = failed_stores(pg_worker)
        # Wrong arguments: the task cannot even be called (a TypeError), a dead letter.
        app.send_task(names.ATTEMPT_SLOT, args=[mark, "second argument"], queue=pg_worker.queue)
        wait_for(lambda: failed_stores(pg_worker) >= before + 2, LETTER_TIMEOUT_S,
                 "two failed attempts to store the letter", pg_worker)  # fmt: skip
        assert not letters_marked(pg_store, mark)
    letter = wait_letter(pg_store, pg_worker, mark)
    assert letter.task == names.ATTEMPT_SLOT and "TypeError" in letter.reason
    wait_for(lambda: queue_drained(pg_worker), LETTER_TIMEOUT_S, "the queue to drain", pg_worker)
