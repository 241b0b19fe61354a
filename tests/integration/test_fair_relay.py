"""Issue 12, finding 6: a fair relay, on PostgreSQL and SQLite through the Pipeline.

Never-sent outcomes go first, whatever backlog of unconfirmed ones waits; re-sends
back off and stop at RELAY_MAX_SENDS, after which the outcome is counted as given up
(``u.outbox.count_given_up``, for alerts) instead of being re-sent forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.bootstrap import bootstrap
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Ending,
    Outcome,
    PendingOutcome,
    Procedure,
)
from retry_pipeline.service.pipeline import Pipeline

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 10:00 Japan time, a Tuesday


@dataclass
class Recorder:
    """Gateway and dispatcher that only remember what they were handed."""

    delivered: list[PendingOutcome] = field(default_factory=list)

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        self.delivered.extend(outcomes)

    def send_slot(self, slot: datetime) -> None:
        return None


def pipeline_over(db_url: str, clock: FixedClock, recorder: Recorder, **kw: int) -> Pipeline:
    settings = Settings(database_url=db_url, **kw)  # type: ignore[arg-type]
    return bootstrap(settings, None, clock=clock, dispatcher=recorder, gateway=recorder)


def ending(n: int) -> Ending:
    subject = Application(f"OSS-2026-{n:06d}", "OSK01", Procedure.CONTINUOUS, f"V-{n}")
    return Ending(
        f"chain-{n:06d}", subject, Outcome.AUTO_CORRECTED,
        frozenset({CertificateKind.SAFETY}), T0, "test", attempt_no=6, live=False,
    )  # fmt: skip


def test_a_never_sent_outcome_goes_on_the_next_relay_despite_3000_unconfirmed(
    store: RetryStore, db_url: str
) -> None:
    long_ago = T0 - timedelta(days=1)
    with store.unit() as u:
        backlog = u.outbox.add([ending(n) for n in range(3000)], long_ago)
        u.outbox.mark_sent([p.id for p in backlog], long_ago)  # sent, never confirmed
    with store.unit() as u:
        (fresh,) = u.outbox.add([ending(3000)], T0)
    recorder = Recorder()
    pipeline = pipeline_over(db_url, FixedClock(T0), recorder)
    pipeline.relay()
    keys = [p.idempotency_key for p in recorder.delivered]
    assert fresh.idempotency_key in keys, "the never-sent outcome was starved"
    assert keys[0] == fresh.idempotency_key, "never-sent outcomes go first"
    assert len(keys) == len(set(keys))


def test_resends_back_off_and_stop_at_the_cap_then_are_counted(
    store: RetryStore, db_url: str
) -> None:
    clock = FixedClock(T0)
    recorder = Recorder()
    pipeline = pipeline_over(
        db_url, clock, recorder, relay_backoff_min=20, relay_backoff_max_min=40, relay_max_sends=3
    )
    with store.unit() as u:
        (outcome,) = u.outbox.add([ending(1)], T0)

    def relay_at(minutes: int) -> int:
        clock.current = T0 + timedelta(minutes=minutes)
        recorder.delivered.clear()
        pipeline.relay()
        return len(recorder.delivered)

    assert relay_at(0) == 1  # first send
    assert relay_at(10) == 0  # back-off: 20 min after the first send
    assert relay_at(20) == 1  # second send
    assert relay_at(50) == 0  # back-off doubled: 40 min after the second send
    assert relay_at(60) == 1  # third send: the cap
    with store.unit() as u:
        assert u.outbox.count_given_up() == 0
    assert relay_at(100) == 0  # due again, but sent 3 times: given up
    with store.unit() as u:
        assert u.outbox.count_given_up() == 1
        assert u.outbox.count_unconfirmed() == 1
    assert relay_at(60 * 24 * 7) == 0  # never again
    assert pipeline.confirm_outcome(outcome.idempotency_key)  # a late confirmation still lands
    with store.unit() as u:
        assert u.outbox.count_given_up() == 0
        assert u.outbox.count_unconfirmed() == 0


def test_relay_settings_are_read_and_checked() -> None:
    env = {
        "RETRY_PIPELINE_RELAY_BACKOFF_MIN": "5",
        "RETRY_PIPELINE_RELAY_BACKOFF_MAX_MIN": "60",
        "RETRY_PIPELINE_RELAY_MAX_SENDS": "4",
    }
    s = Settings.from_env(env)
    assert (s.relay_backoff_min, s.relay_backoff_max_min, s.relay_max_sends) == (5, 60, 4)
    from retry_pipeline.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env({**env, "RETRY_PIPELINE_RELAY_MAX_SENDS": "0"})
