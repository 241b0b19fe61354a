"""The simulation tells a report send the broker lost for good from one still on its way.

A duplicate of a report that already has its receipt is never re-sent (DESIGN 11), so
when the broker loses it the harness must stop waiting for it, or it never jumps an
idle gap again (a faulted CI run once crawled through a weekend at 600 x until its
timeout). These run on a private redis-server with kombu's own publish and consume.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from retry_pipeline.client import DurableSender, report_missing
from simulation import harness
from simulation.harness import LostSends
from simulation.processes import Run, client_app, reports_in_broker
from simulation.redis_server import PrivateRedis
from tests.support import one_message_held

BODY = {
    "application": "L-1", "office": "O1", "procedure": "continuous", "vehicle": "VL1",
    "missing": ["safety"], "detected_at": "2026-11-27T09:12:00+09:00",
}  # fmt: skip


def _run(tmp_path: Path, private_redis: PrivateRedis) -> Run:
    run = Run(
        workdir=tmp_path,
        database_url="sqlite://",
        broker_url=private_redis.url,
        clock_file=tmp_path / "clock.json",
        env={},
        concurrency=1,
    )
    run.reports_sent = 1  # the duplicate the harness counted
    return run


def _send(run: Run) -> None:
    report_missing(BODY, app=client_app(run.broker_url), queue=run.queue)


def test_a_queued_report_is_counted(tmp_path: Path, private_redis: PrivateRedis) -> None:
    run = _run(tmp_path, private_redis)
    assert reports_in_broker(run) == 0
    _send(run)
    _send(run)
    assert reports_in_broker(run) == 2


def test_a_delivered_unacked_report_is_still_in_the_broker(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """A worker holds it (its micro-batch has not committed): it is not lost."""
    run = _run(tmp_path, private_redis)
    _send(run)
    with one_message_held(run.broker_url, run.queue) as (conn, message):
        assert conn.default_channel.client.llen(run.queue) == 0  # off the list
        assert reports_in_broker(run) == 1  # in kombu's unacked hash
        message.ack()
    assert reports_in_broker(run) == 0


def test_a_slot_message_is_not_a_report(tmp_path: Path, private_redis: PrivateRedis) -> None:
    run = _run(tmp_path, private_redis)
    client_app(run.broker_url).send_task(
        "retry_pipeline.attempt_slot", kwargs={"slot": "2026-11-27T09:20:00+09:00"}, queue=run.queue
    )
    assert reports_in_broker(run) == 0


def test_a_send_is_forgotten_only_once_it_is_nowhere(
    tmp_path: Path, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "GONE_AFTER_S", 0.2)
    run = _run(tmp_path, private_redis)
    said: list[str] = []
    gone = LostSends(run, said.append, lambda: 0)
    _send(run)  # still queued: the run waits for it
    assert not gone.all_handled(processed=0)
    assert not gone.all_handled(processed=0)
    with client_app(run.broker_url).connection_for_write() as conn:
        conn.default_channel.client.delete(run.queue)  # the broker forgets it
    assert not gone.all_handled(processed=0)  # nowhere, but not for long enough yet
    time.sleep(0.3)
    assert gone.all_handled(processed=0)
    assert run.reports_sent == 0
    assert said == ["1 send(s) of reports that had their receipt were lost by the broker"]
    assert gone.all_handled(processed=0)  # and it stays forgotten


def test_every_send_handled_needs_no_broker_look(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    run = _run(tmp_path, private_redis)
    _send(run)  # (would count as in the broker)
    assert LostSends(run, print, lambda: 1).all_handled(processed=1)


def test_a_report_without_receipt_is_never_forgotten(
    tmp_path: Path, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sender re-sends it (DESIGN 11): the run waits for that, however long."""
    monkeypatch.setattr(harness, "GONE_AFTER_S", 0.0)
    run = _run(tmp_path, private_redis)
    run.sender = DurableSender(
        f"sqlite:///{tmp_path / 'sender.sqlite3'}", broker_url=run.broker_url, queue=run.queue
    )
    run.sender.send(BODY)
    with client_app(run.broker_url).connection_for_write() as conn:
        conn.default_channel.client.delete(run.queue)  # lost, and no receipt
    assert run.unreceipted() == 1
    assert not LostSends(run, print, lambda: 0).all_handled(processed=0)
    assert run.reports_sent == 1


def test_a_report_handled_while_the_broker_was_read_is_not_lost(
    tmp_path: Path, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``processed`` came from a snapshot before the broker was read; the report was
    acked in between: counted again, it is handled, and nothing is forgotten."""
    monkeypatch.setattr(harness, "GONE_AFTER_S", 0.0)
    run = _run(tmp_path, private_redis)
    said: list[str] = []
    gone = LostSends(run, said.append, lambda: 1)  # the fresh count sees it
    assert gone.all_handled(processed=0)
    assert run.reports_sent == 1 and said == []  # nothing forgotten


def test_a_busy_queue_restarts_the_quiet_time(
    tmp_path: Path, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "GONE_AFTER_S", 0.2)
    run = _run(tmp_path, private_redis)
    gone = LostSends(run, print, lambda: 0)
    assert not gone.all_handled(processed=0)  # quiet from now
    time.sleep(0.3)
    gone.busy()  # the queue had work meanwhile
    assert not gone.all_handled(processed=0)  # a fresh 0.2 s starts here
    assert run.reports_sent == 1
