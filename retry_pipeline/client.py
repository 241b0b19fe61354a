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

Each message carries the instant it was sent (header ``retry_pipeline_sent_at``): a
report that reaches the pipeline late is planned from then (R4a), time spent in the
pipeline's own broker does not count.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from retry_pipeline.names import (
    CLOSE,
    DEFAULT_BROKER_URL,
    DEFAULT_QUEUE,
    REPORT_MISSING,
    REPORT_MISSING_BATCH,
)

_apps: dict[str, Celery] = {}
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
    body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in report.items()}
    sender = app or _app(broker_url)
    result = sender.send_task(REPORT_MISSING, args=[body], queue=queue, headers=_sent(sent_at))
    return str(result.id)


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
        bodies = [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()}
            for r in reports[start : start + batch]
        ]
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
