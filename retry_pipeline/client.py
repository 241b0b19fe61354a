"""What the examination worker calls: send a report by task name, nothing else imported.

    from retry_pipeline.client import report_missing
    report_missing({"application": "A-1", "office": "OSK01", "procedure": "continuous",
                    "vehicle": "JA11-123456", "missing": ["safety"], "confirmed": [],
                    "detected_at": "2026-11-27T08:36:00+09:00"},
                   broker_url="redis://:secret@redis:6379/0")

The pipeline validates the message; a refused one is kept in its dead-letter table.

Signed messages (docs/security.md): with ``RETRY_PIPELINE_SECURITY_KEY``,
``RETRY_PIPELINE_SECURITY_CERTIFICATE`` (the examination side's own key and
certificate) and ``RETRY_PIPELINE_SECURITY_CERT_STORE`` (a folder holding the
pipeline's certificate, to verify outcomes) set, or with ``signed_app(...)``, every
report is signed. Celery registers one ``auth`` serializer per process: one key.

Each message carries the instant it was sent (header ``retry_pipeline_sent_at``): a report
that reaches the pipeline late is planned from then (R4a); its own broker's time is ours.

A broker may forget a queued report (a Redis flush or a restart without persistence).
``DurableSender`` keeps each report in a local table (any SQLAlchemy URL) until its
receipt arrives (``examination.report_received``, DESIGN 11) and re-sends it after a
timeout; the pipeline takes a repeated (application, ``detected_at``) as a duplicate.

    sender = DurableSender("sqlite:////var/lib/examination/reports.sqlite3",
                           broker_url="redis://:secret@redis:6379/0")
    sender.send(report)            # stored, then sent
    sender.receipt(**body)         # in the examination worker's report_received task
    sender.resend_due()            # periodically: re-send what has no receipt yet
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Engine, Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import UTCDateTime
from retry_pipeline.names import (
    CLOSE,
    DEFAULT_BROKER_URL,
    DEFAULT_QUEUE,
    REPORT_MISSING,
    REPORT_MISSING_BATCH,
)

_apps: dict[str, Celery] = {}
Instant = datetime | None
SENT_AT_HEADER = "retry_pipeline_sent_at"  # read by retry_pipeline.tasks (R4a)


def _sent(sent_at: datetime | None) -> dict[str, str]:
    return {SENT_AT_HEADER: (sent_at or datetime.now(UTC)).isoformat()}


def _app(broker_url: str | None) -> Celery:
    url = broker_url or os.environ.get("RETRY_PIPELINE_BROKER_URL", DEFAULT_BROKER_URL)
    if url not in _apps:
        env = os.environ.get
        names = ("KEY", "CERTIFICATE", "CERT_STORE")
        files = [env(f"RETRY_PIPELINE_SECURITY_{n}", "") for n in names]
        if all(files):
            _apps[url] = signed_app(url, *files)
        else:
            app = Celery("retry_pipeline_client", broker=url, set_as_current=False)
            app.conf.update(
                task_serializer="json",
                accept_content=["json"],
                task_ignore_result=True,
                broker_connection_retry_on_startup=True,
            )
            _apps[url] = app
    return _apps[url]


def signed_app(broker_url: str, key: str, certificate: str, cert_store: str) -> Celery:
    """A sender that signs with ``key``/``certificate`` (PEM files) and verifies by the store."""
    app = Celery("retry_pipeline_client", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="auth",
        accept_content=["auth"],
        security_key=key,
        security_certificate=certificate,
        security_cert_store=cert_store,
        security_digest="sha256",
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    app.setup_security()
    return app


def report_missing(
    report: dict[str, Any],
    *,
    broker_url: str | None = None,
    queue: str = DEFAULT_QUEUE,
    app: Celery | None = None,
    sent_at: datetime | None = None,
) -> str:
    """Send one missing-certificate report; returns the Celery task id.

    ``sent_at``: when it is sent (default now; a simulation passes its own clock).
    """
    if not isinstance(report, dict):
        raise TypeError("a report is a dict with the fields of the message contract")
    body = _body(report)
    sender = app or _app(broker_url)
    result = sender.send_task(REPORT_MISSING, args=[body], queue=queue, headers=_sent(sent_at))
    return str(result.id)


def _body(report: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in report.items()}


def report_missing_many(
    reports: list[dict[str, Any]],
    *,
    broker_url: str | None = None,
    queue: str = DEFAULT_QUEUE,
    app: Celery | None = None,
    batch: int = 200,
    sent_at: datetime | None = None,
) -> list[str]:
    """Send many reports, ``batch`` per message (one transaction each); returns task ids."""
    if not 1 <= batch <= 500:
        raise ValueError("batch must be 1..500 reports per message")
    sender = app or _app(broker_url)
    ids = []
    for start in range(0, len(reports), batch):
        bodies = [_body(r) for r in reports[start : start + batch]]
        result = sender.send_task(
            REPORT_MISSING_BATCH, args=[bodies], queue=queue, headers=_sent(sent_at)
        )
        ids.append(str(result.id))
    return ids


def send_close(
    at: datetime | None = None,
    *,
    broker_url: str | None = None,
    queue: str = DEFAULT_QUEUE,
    app: Celery | None = None,
) -> str:
    """Send an explicit OSS close signal (R10); ``at`` defaults to when it is handled."""
    kwargs = {} if at is None else {"at": at.isoformat()}
    result = (app or _app(broker_url)).send_task(CLOSE, kwargs=kwargs, queue=queue)
    return str(result.id)


# -- the durable sender (DESIGN 11) --------------------------------------------------


class _SenderBase(DeclarativeBase):
    """The sender's own table, in the database the sender chooses."""


class SentReport(_SenderBase):
    """A report the sender keeps until its receipt arrives."""

    __tablename__ = "retry_pipeline_sent_report"
    __table_args__ = (UniqueConstraint("application", "detected_at", name="uq_sent_report"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    application: Mapped[str] = mapped_column(String(200))
    detected_at: Mapped[str] = mapped_column(String(200))  # the key, as ``report_key`` gives it
    body: Mapped[str] = mapped_column(Text)  # the report's JSON
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    send_count: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    status: Mapped[str | None] = mapped_column(String(16))  # the receipt's
    chain_id: Mapped[str | None] = mapped_column(String(32))


def report_key(application: str, detected_at: str) -> tuple[str, str]:
    """What a report and its receipt share: the application and the detection instant (UTC).

    Text that is not an ISO 8601 instant with an offset is kept as it is (a refused
    report's receipt carries the message's own text back).
    """
    try:
        parsed = datetime.fromisoformat(detected_at.strip())
    except ValueError:
        return application.strip(), detected_at
    if parsed.tzinfo is None:
        return application.strip(), detected_at
    return application.strip(), parsed.astimezone(UTC).isoformat()


MAX_DOUBLINGS = 3  # the wait for a receipt grows to 8 x resend_after, no further


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SenderCounts:
    """What the sender holds."""

    stored: int
    unreceipted: int
    resends: int  # sends beyond each report's first


class DurableSender:
    """Sends reports and keeps each until its receipt arrives; re-sends the overdue ones.

    ``store_url``: where the reports are kept (its table is created on first use).
    ``resend_after``: how long a sent report waits for its receipt before it goes again.
    ``clock``: the sender's time (aware); the real UTC clock unless given.
    """

    def __init__(
        self,
        store_url: str,
        *,
        broker_url: str | None = None,
        queue: str = DEFAULT_QUEUE,
        app: Celery | None = None,
        resend_after: timedelta = timedelta(minutes=10),
        batch: int = 200,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not 1 <= batch <= 500:
            raise ValueError("batch must be 1..500 reports per message")
        self.engine: Engine = make_engine(store_url)
        _SenderBase.metadata.create_all(self.engine)
        self.broker_url, self.queue, self.app = broker_url, queue, app
        self.resend_after, self.batch, self.clock = resend_after, batch, clock

    def send(self, report: dict[str, Any], *, taken_at: Instant = None) -> None:
        """Keep ``report`` (committed first), then send it."""
        self.send_many([report], taken_at=taken_at)

    def send_many(self, reports: Sequence[dict[str, Any]], *, taken_at: Instant = None) -> None:
        """Keep every report in one transaction, then send them ``batch`` to a message.

        A report already kept (same application and ``detected_at``) is sent again.
        ``taken_at``: when the reports were taken here, if not now (a simulation passes
        the instant its scenario sends them); every send carries it as its sent-at (R4a).
        """
        bodies = [_body(r) for r in reports]
        for body in bodies:
            if not isinstance(body.get("application"), str) or not isinstance(
                body.get("detected_at"), str
            ):
                raise ValueError("a report needs an application and a detected_at (ISO text)")
        now = self.clock() if taken_at is None else taken_at
        keys = [report_key(b["application"], b["detected_at"]) for b in bodies]
        with Session(self.engine) as session, session.begin():
            known = set(self._ids(session, keys))
            for key, body in zip(keys, bodies, strict=True):
                if key not in known:
                    known.add(key)
                    session.add(
                        SentReport(
                            application=key[0], detected_at=key[1], body=json.dumps(body),
                            stored_at=now, sent_at=None, send_count=0,
                        )
                    )  # fmt: skip
        self._send(bodies, keys)

    def receipt(
        self,
        application: str,
        detected_at: str,
        status: str,
        chain_id: str | None = None,
        **_: Any,
    ) -> bool:
        """The pipeline took the report: stop re-sending it. False for a report not kept here."""
        key = report_key(application, detected_at)
        with Session(self.engine) as session, session.begin():
            row = session.scalar(
                select(SentReport).where(
                    SentReport.application == key[0], SentReport.detected_at == key[1]
                )
            )
            if row is None:
                return False
            if row.received_at is None:  # the first receipt stays
                row.received_at, row.status, row.chain_id = self.clock(), status, chain_id
            return True

    def resend_due(self, limit: int = 5000) -> int:
        """Send again (up to ``limit``, oldest first) the reports without a receipt that were
        never sent, or sent ``resend_after`` ago, doubled for each send beyond the first
        (at most ``MAX_DOUBLINGS`` times): a slow pipeline is not flooded. How many."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            rows = session.scalars(
                select(SentReport)
                .where(
                    SentReport.received_at.is_(None),
                    SentReport.sent_at.is_(None) | (SentReport.sent_at <= now - self.resend_after),
                )
                .order_by(SentReport.id)
            ).all()
            due = [
                (json.loads(r.body), (r.application, r.detected_at))
                for r in rows
                if r.sent_at is None or r.sent_at <= now - self.wait_after(r.send_count)
            ][:limit]
        if due:
            self._send([b for b, _ in due], [k for _, k in due])
        return len(due)

    def wait_after(self, sends: int) -> timedelta:
        """How long a report sent ``sends`` times waits for its receipt before the next send."""
        doublings: int = min(max(sends - 1, 0), MAX_DOUBLINGS)
        return self.resend_after * (1 << doublings)

    def counts(self) -> SenderCounts:
        """How many reports are kept, how many still wait for a receipt, how many resends."""
        with Session(self.engine) as session:
            stored = session.scalar(select(func.count()).select_from(SentReport)) or 0
            waiting = session.scalar(
                select(func.count()).select_from(SentReport).where(SentReport.received_at.is_(None))
            )
            resends = session.scalar(
                select(func.sum(SentReport.send_count - 1)).where(SentReport.send_count > 1)
            )
        return SenderCounts(int(stored), int(waiting or 0), int(resends or 0))

    def receipts(self) -> dict[tuple[str, str], tuple[str | None, str | None]]:
        """(status, chain id) of every kept report by its key (None while unreceipted)."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    SentReport.application, SentReport.detected_at, SentReport.status,
                    SentReport.chain_id,
                )
            )  # fmt: skip
            return {(a, d): (s, c) for a, d, s, c in rows}

    def _ids(self, session: Session, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        apps = sorted({k[0] for k in keys})
        found: list[tuple[str, str]] = []
        for start in range(0, len(apps), 500):
            stmt = select(SentReport.application, SentReport.detected_at).where(
                SentReport.application.in_(apps[start : start + 500])
            )
            found += [(a, d) for a, d in session.execute(stmt)]
        return found

    def _send(self, bodies: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str]]) -> None:
        sender = self.app or _app(self.broker_url)
        for start in range(0, len(bodies), self.batch):
            chunk = list(bodies[start : start + self.batch])
            # R4a: a re-sent report keeps the instant it was first taken here, so a report
            # the broker lost is not taken for a late one and re-planned.
            headers = _sent(self._first_taken(keys[start : start + self.batch]))
            if len(chunk) == 1:
                sender.send_task(REPORT_MISSING, args=chunk, queue=self.queue, headers=headers)
            else:
                sender.send_task(
                    REPORT_MISSING_BATCH, args=[chunk], queue=self.queue, headers=headers
                )
            # Marked after the broker took them: a crash before leaves them never-sent.
            self._mark_sent(keys[start : start + self.batch])

    def _first_taken(self, keys: Sequence[tuple[str, str]]) -> datetime | None:
        """When the earliest of these reports was first kept here (it was sent then)."""
        with Session(self.engine) as session:
            taken = [
                session.scalar(
                    select(SentReport.stored_at).where(
                        SentReport.application == application,
                        SentReport.detected_at == detected_at,
                    )
                )
                for application, detected_at in keys
            ]
        known = [t for t in taken if t is not None]
        return min(known) if known else None

    def _mark_sent(self, keys: Sequence[tuple[str, str]]) -> None:
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            for application, detected_at in keys:
                session.execute(
                    update(SentReport)
                    .where(
                        SentReport.application == application,
                        SentReport.detected_at == detected_at,
                    )
                    .values(sent_at=now, send_count=SentReport.send_count + 1)
                )
