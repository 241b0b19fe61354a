"""Issue 11: what a pool process does with a buffered batch of one-report messages.

``accept_buffered`` over the fakes: valid reports are accepted in one transaction,
a refused one leaves its dead letter, a malformed message and a batch that fails as a
whole go back one by one (and a failed batch keeps no dead letter twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pendulum
import pytest

from retry_pipeline import intake_buffer, tasks
from retry_pipeline.intake_buffer import DONE, ONE_BY_ONE, accept_buffered
from tests.fakes import FakeStore, Harness, over_fakes

NOW = pendulum.datetime(2026, 11, 27, 8, 36, 5, tz="Asia/Tokyo")


def body(application: str, procedure: str = "continuous") -> dict[str, Any]:
    return {
        "application": application, "office": "B1", "procedure": procedure,
        "vehicle": f"V-{application}", "missing": ["safety"],
        "detected_at": "2026-11-27T08:36:00+09:00",
    }  # fmt: skip


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = over_fakes()
    harness.at(NOW)
    monkeypatch.setattr(tasks, "service", lambda: harness.pipeline)
    yield harness


def letters(h: Harness) -> list[str]:
    with h.store.unit() as u:
        return [d.reason for d in u.dead_letters.newest(10)]


def test_valid_reports_share_one_transaction_and_a_refusal_keeps_its_letter(h: Harness) -> None:
    assert isinstance(h.store, FakeStore)
    statuses = accept_buffered([
        ([body("A1")], {}), ([body("A2")], {}), ([body("A3", "bogus")], {}), ([], body("A4")),
    ])  # fmt: skip
    assert statuses == [DONE, DONE, DONE, DONE]
    assert h.chain("A1") is not None and h.chain("A2") is not None and h.chain("A4") is not None
    assert h.chain("A3") is None
    assert len(letters(h)) == 1
    after_four = h.store.commits
    assert accept_buffered([([body(f"M{i}")], {}) for i in range(40)]) == [DONE] * 40
    assert h.store.commits - after_four == 1  # forty reports, one transaction


def test_a_malformed_message_goes_one_by_one(h: Harness) -> None:
    statuses = accept_buffered([([body("B1"), body("B2")], {}), ([body("B3")], {})])
    assert statuses == [ONE_BY_ONE, DONE]
    assert h.chain("B1") is None and h.chain("B3") is not None
    assert letters(h) == []  # the ordinary path refuses it, once


def test_a_failed_batch_commits_nothing_and_goes_one_by_one(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(_: Any) -> Any:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(h.pipeline, "accept_reports", down)
    statuses = accept_buffered([([body("C1")], {}), ([body("C2", "bogus")], {})])
    assert statuses == [ONE_BY_ONE, ONE_BY_ONE]
    assert h.chain("C1") is None
    assert letters(h) == []


def test_the_buffer_is_bounded() -> None:
    assert 0 < intake_buffer.FLUSH_EVERY <= intake_buffer.MAX_PENDING
