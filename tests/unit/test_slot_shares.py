"""Issue 11: a slot's work split into batch messages when the store shares claims.

Over the fakes: with ``shares_claims`` a slot message decides one batch and, when
the batch was full, first sends the slot's message again (another worker takes the
next batch); a single-writer store decides the whole slot in one message.
"""

from __future__ import annotations

import pendulum

from retry_pipeline.model import CertificateKind
from tests.fakes import FakeStore, Harness, continuous, over_fakes, report

SAFETY = CertificateKind.SAFETY


def jst(hour: int, minute: int, second: int = 0) -> pendulum.DateTime:
    return pendulum.datetime(2026, 11, 27, hour, minute, second, tz="Asia/Tokyo")


SLOT = jst(8, 40)


def _due(n: int, shares: bool) -> Harness:
    h = over_fakes()
    assert isinstance(h.store, FakeStore)
    h.store.shares_claims = shares
    h.at(jst(8, 36, 5))
    for _ in range(n):
        h.pipeline.accept_report(report(continuous(), {SAFETY}, jst(8, 36)))
    h.dispatcher.sent.clear()
    h.at(jst(8, 40, 1))
    return h


def _attempted(h: Harness) -> int:
    with h.store.unit() as u:
        return sum(1 for c in u.chains.of_office(None) if c.attempts_made == 1)


def test_a_full_batch_sends_the_slot_again_before_deciding_and_stops() -> None:
    h = _due(7, shares=True)
    counts = h.pipeline.run_slot(SLOT, batch=3)
    assert counts["next"] == 3  # one batch only: the rest is the next message's
    assert h.dispatcher.sent.count(SLOT) == 1
    assert _attempted(h) == 3


def test_batch_messages_decide_every_chain_once_and_the_last_sends_nothing() -> None:
    h = _due(7, shares=True)
    decided = [sum(h.pipeline.run_slot(SLOT, batch=3).values()) for _ in range(3)]
    assert decided == [3, 3, 1]
    assert h.dispatcher.sent.count(SLOT) == 2  # after the two full batches only
    assert _attempted(h) == 7
    assert sum(h.pipeline.run_slot(SLOT, batch=3).values()) == 0  # a redelivery finds none


def test_a_single_writer_store_decides_the_whole_slot_in_one_message() -> None:
    h = _due(7, shares=False)
    assert h.pipeline.run_slot(SLOT, batch=3)["next"] == 7
    assert h.dispatcher.sent.count(SLOT) == 0
    assert _attempted(h) == 7


def test_broker_down_the_worker_decides_the_rest_itself() -> None:
    h = _due(7, shares=True)
    h.dispatcher.failures = 100  # down for the whole slot
    assert h.pipeline.run_slot(SLOT, batch=3)["next"] == 7
    assert _attempted(h) == 7
