"""The simulation's broker: Redis or RabbitMQ (issue 11: the e2e suite runs on each).

On RabbitMQ the harness counts what its run's queue holds with a passive declare on
one kept connection, deletes the run's queues after, and refuses fault runs (they
restart and flush a private Redis) with a one-line usage error before anything
starts. These run against the session's own RabbitMQ virtual host.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp.exceptions import ChannelError
from click.testing import CliRunner
from kombu import Connection

from retry_pipeline.cli import main
from retry_pipeline.client import report_missing
from simulation import harness
from simulation.harness import LostSends
from simulation.processes import (
    Run,
    choose_broker,
    client_app,
    is_amqp,
    queue_length,
    refuse_amqp_faults,
    reports_in_broker,
)
from tests.support import one_message_held

BODY = {
    "application": "Q-1", "office": "O1", "procedure": "continuous", "vehicle": "VQ1",
    "missing": ["safety"], "detected_at": "2026-11-27T09:12:00+09:00",
}  # fmt: skip
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def run(tmp_path: Path, rabbitmq_url: str) -> Iterator[Run]:
    made = Run(
        workdir=tmp_path,
        database_url="sqlite://",
        broker_url=rabbitmq_url,
        clock_file=tmp_path / "clock.json",
        env={},
        concurrency=1,
    )
    try:
        yield made
    finally:
        made.close_broker()
        made.forget_queues()


def _send(run: Run) -> None:
    report_missing(BODY, app=client_app(run.broker_url), queue=run.queue)


def _counted(run: Run, want: int) -> int:
    """``queue_length`` once it shows ``want``: a publish without confirms reaches the
    queue's count a moment after ``send`` returns (it fails after 5 s)."""
    deadline = time.monotonic() + 5
    while (got := queue_length(run)) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return got


def test_a_queue_not_declared_yet_holds_nothing_and_the_probe_recovers(run: Run) -> None:
    assert queue_length(run) == 0  # a 404 closes the channel: the probe starts again
    assert queue_length(run) == 0
    _send(run)
    assert _counted(run, 1) == 1


def test_waiting_messages_are_counted_on_one_kept_connection(run: Run) -> None:
    _send(run)
    _send(run)
    assert _counted(run, 2) == reports_in_broker(run) == 2
    kept = run.amqp
    assert kept is not None
    client_app(run.broker_url).send_task(
        "retry_pipeline.attempt_slot", kwargs={"slot": "2026-11-27T09:20:00+09:00"}, queue=run.queue
    )
    # RabbitMQ shows no message without taking it: any waiting message counts
    assert _counted(run, 3) == reports_in_broker(run) == 3
    assert run.amqp is kept


def test_a_delivered_message_is_off_the_count_until_it_comes_back(run: Run) -> None:
    """A consumer holds it unacknowledged; rejected, it waits again (nothing lost)."""
    _send(run)
    with one_message_held(run.broker_url, run.queue) as (_conn, message):
        assert queue_length(run) == 0
        message.reject(requeue=True)
    assert _counted(run, 1) == 1


def test_a_duplicate_a_worker_holds_is_never_taken_for_lost(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-sent report whose first send has its receipt, taken by a worker and not yet
    acknowledged: RabbitMQ shows it nowhere, but it loses nothing here, so the run
    waits for it instead of forgetting it (and jumping the clock past it)."""
    monkeypatch.setattr(harness, "GONE_AFTER_S", 0.0)
    run.reports_sent = 1  # the duplicate the harness counted
    said: list[str] = []
    gone = LostSends(run, said.append, lambda: 0)
    _send(run)
    with one_message_held(run.broker_url, run.queue) as (_conn, message):
        assert reports_in_broker(run) == 0  # held unacked: not visible
        assert not gone.all_handled(processed=0)
        assert not gone.all_handled(processed=0)
        assert run.reports_sent == 1 and said == []
        message.ack()
    assert gone.all_handled(processed=1)  # handled: the run goes on


def test_forget_queues_deletes_the_runs_queues_and_exchanges(run: Run, rabbitmq_url: str) -> None:
    _send(run)
    assert _counted(run, 1) == 1
    run.close_broker()
    run.forget_queues()
    for name in (run.queue, run.examination_queue):
        with Connection(rabbitmq_url) as conn, pytest.raises(ChannelError, match="NOT_FOUND"):
            conn.default_channel.queue_declare(name, passive=True)
    with Connection(rabbitmq_url) as conn, pytest.raises(ChannelError, match="NOT_FOUND"):
        conn.default_channel.exchange_declare(run.queue, "direct", passive=True)
    assert queue_length(run) == 0


def test_choose_broker_keeps_a_rabbitmq_url_as_given(rabbitmq_url: str) -> None:
    assert choose_broker(rabbitmq_url, 13, False) == (rabbitmq_url, None)
    assert is_amqp(rabbitmq_url) and is_amqp("pyamqp://h//") and is_amqp("amqps://h//")
    assert not is_amqp("redis://127.0.0.1:6379/0") and not is_amqp("rediss://h/0")


def test_faults_on_rabbitmq_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="private Redis"):
        refuse_amqp_faults(("kill-worker",), "amqp://guest:guest@127.0.0.1:5672//")
    refuse_amqp_faults((), "amqp://guest:guest@127.0.0.1:5672//")  # no faults: fine
    refuse_amqp_faults(("kill-worker",), "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RETRY_PIPELINE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    with pytest.raises(ValueError, match="private Redis"):
        refuse_amqp_faults(("restart-redis",), None)  # the environment's broker counts


def test_cli_refuses_faults_on_rabbitmq_before_it_starts(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "simulate", str(FIXTURES / "demo-scenario.json"), "--faults", "kill-worker",
            "--broker-url", "amqp://guest:secret@127.0.0.1:5672//", "--workdir", str(workdir),
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "private Redis" in result.output
    assert "secret" not in result.output
    assert not workdir.exists()  # refused before anything started
