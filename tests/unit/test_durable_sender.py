"""``client.DurableSender`` over SQLite: kept until the receipt, re-sent after the timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retry_pipeline.client import DurableSender, report_key
from retry_pipeline.names import REPORT_MISSING, REPORT_MISSING_BATCH

T0 = datetime(2026, 11, 26, 23, 36, tzinfo=UTC)


@dataclass
class Sent:
    id: str


@dataclass
class RecordingApp:
    """Stands in for the Celery app: keeps what would go to the broker."""

    messages: list[tuple[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    down: bool = False

    def send_task(
        self, name: str, args: list[Any], queue: str, headers: dict[str, str] | None = None
    ) -> Sent:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.messages.append((name, args[0]))
        self.headers.append(headers or {})
        return Sent(str(len(self.messages)))

    def applications(self) -> list[str]:
        out: list[str] = []
        for name, body in self.messages:
            out += (
                [body["application"]]
                if name == REPORT_MISSING
                else [b["application"] for b in body]
            )
        return out


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


def body(application: str, detected_at: str = "2026-11-27T08:36:00+09:00") -> dict[str, Any]:
    return {
        "application": application, "office": "OSK01", "procedure": "continuous",
        "vehicle": "V-1", "missing": ["safety"], "detected_at": detected_at,
    }  # fmt: skip


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sender.sqlite3'}"


def sender(url: str, app: RecordingApp, clock: Clock, **kw: Any) -> DurableSender:
    return DurableSender(url, app=app, clock=clock, resend_after=timedelta(minutes=10), **kw)  # type: ignore[arg-type]


def test_a_report_is_kept_and_sent_then_resent_only_after_the_timeout(url: str) -> None:
    app, clock = RecordingApp(), Clock()
    s = sender(url, app, clock)
    s.send(body("A-1"))
    assert app.applications() == ["A-1"]
    clock.now = T0 + timedelta(minutes=9)
    assert s.resend_due() == 0
    clock.now = T0 + timedelta(minutes=10)
    assert s.resend_due() == 1
    assert app.applications() == ["A-1", "A-1"]
    assert s.counts().resends == 1


def test_a_receipt_stops_the_resends_whatever_offset_it_names_the_instant_in(url: str) -> None:
    app, clock = RecordingApp(), Clock()
    s = sender(url, app, clock)
    s.send(body("A-1", "2026-11-26T23:36:00Z"))
    assert s.receipt("A-1", "2026-11-27T08:36:00+09:00", "accepted", "c1", office="OSK01")
    clock.now = T0 + timedelta(hours=1)
    assert s.resend_due() == 0
    assert s.counts().unreceipted == 0
    assert s.receipts() == {report_key("A-1", "2026-11-26T23:36:00Z"): ("accepted", "c1")}


def test_the_first_receipt_stays(url: str) -> None:
    s = sender(url, RecordingApp(), Clock())
    s.send(body("A-1"))
    s.receipt("A-1", "2026-11-27T08:36:00+09:00", "accepted", "c1")
    s.receipt("A-1", "2026-11-27T08:36:00+09:00", "duplicate", "c1")
    assert list(s.receipts().values()) == [("accepted", "c1")]


def test_a_receipt_of_a_report_not_kept_here_is_ignored(url: str) -> None:
    s = sender(url, RecordingApp(), Clock())
    assert not s.receipt("B-1", "2026-11-27T08:36:00+09:00", "accepted", "c1")
    s.send(body("A-1"))
    assert not s.receipt("A-1", "2026-11-27T08:37:00+09:00", "accepted", "c1")  # another report


def test_a_refused_receipt_matches_by_the_message_own_text(url: str) -> None:
    s = sender(url, RecordingApp(), Clock())
    s.send(body("A-1", "yesterday"))
    assert s.receipt("A-1", "yesterday", "refused", None)
    assert s.counts().unreceipted == 0


def test_reports_survive_the_sender_process(url: str) -> None:
    app, clock = RecordingApp(), Clock()
    sender(url, app, clock).send_many([body("A-1"), body("A-2")])
    again = sender(url, app, clock)  # a new process over the same store
    clock.now = T0 + timedelta(minutes=11)
    assert again.resend_due() == 2
    assert again.counts().stored == 2


def test_a_report_the_broker_did_not_take_goes_at_the_next_resend(url: str) -> None:
    app, clock = RecordingApp(down=True), Clock()
    s = sender(url, app, clock)
    with pytest.raises(ConnectionError):
        s.send(body("A-1"))
    app.down = False
    assert s.resend_due() == 1  # never sent: due at once
    assert app.applications() == ["A-1"]


def test_many_reports_go_in_batches(url: str) -> None:
    app = RecordingApp()
    s = sender(url, app, Clock(), batch=2)
    s.send_many([body(f"A-{i}") for i in range(5)])
    assert [name for name, _ in app.messages] == [
        REPORT_MISSING_BATCH, REPORT_MISSING_BATCH, REPORT_MISSING,
    ]  # fmt: skip
    assert s.counts().stored == 5


def test_sending_the_same_report_again_keeps_one_row(url: str) -> None:
    app = RecordingApp()
    s = sender(url, app, Clock())
    s.send(body("A-1"))
    s.send(body("A-1"))
    assert s.counts().stored == 1
    assert app.applications() == ["A-1", "A-1"]


@pytest.mark.parametrize(
    "bad", [{"detected_at": "2026-11-27T08:36:00+09:00"}, {"application": "A"}]
)
def test_a_report_without_its_key_is_refused_before_anything_is_kept(
    url: str, bad: dict[str, Any]
) -> None:
    s = sender(url, RecordingApp(), Clock())
    with pytest.raises(ValueError, match="application and a detected_at"):
        s.send(bad)
    assert s.counts().stored == 0


def test_the_wait_for_a_receipt_doubles_with_each_resend_up_to_eight_times(url: str) -> None:
    app, clock = RecordingApp(), Clock()
    s = sender(url, app, clock)
    s.send(body("A-1"))
    sent_at = [T0]
    for wait_min in (10, 20, 40, 80, 80):
        clock.now = sent_at[-1] + timedelta(minutes=wait_min) - timedelta(seconds=1)
        assert s.resend_due() == 0
        clock.now = sent_at[-1] + timedelta(minutes=wait_min)
        assert s.resend_due() == 1
        sent_at.append(clock.now)
    assert s.counts().resends == 5


def test_a_resent_report_carries_the_instant_it_was_first_taken(tmp_path: Path) -> None:
    # R4a: a report the broker lost is re-sent with its first sent-at, so the pipeline
    # does not take it for a late report and re-plan it.
    from retry_pipeline.client import SENT_AT_HEADER

    now = [datetime(2026, 11, 27, 8, 36, 5, tzinfo=UTC)]
    app = RecordingApp()
    sender = DurableSender(
        f"sqlite:///{tmp_path / 'sent.sqlite3'}",
        app=app,
        clock=lambda: now[0],  # type: ignore[arg-type]
    )
    sender.send(body("A-RESENT"))
    now[0] = now[0] + timedelta(hours=1)
    assert sender.resend_due() == 1
    first, again = (h[SENT_AT_HEADER] for h in app.headers)
    assert first == again == "2026-11-27T08:36:05+00:00"
