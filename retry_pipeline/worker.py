"""Worker hooks: a message the worker cannot take is kept as a dead letter, never dropped.

Celery acknowledges undecodable messages (a pickle body, broken JSON) and rejects
unknown tasks after logging them; these hooks first store the raw message in the
dead-letter table (``retry-pipeline dead-letters``). Enabled with
``worker_consumer = "retry_pipeline.worker:DeadLetterConsumer"`` in celeryconfig.py.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_rejected, task_unknown
from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)
MAX_RAW = 65_536


def _raw(message: Any) -> str:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes):
        body = body[:MAX_RAW].decode("utf-8", errors="replace")
    headers = getattr(message, "headers", {}) or {}
    content_type = getattr(message, "content_type", "?")
    return f"content-type={content_type} task={headers.get('task')} body={str(body)[:MAX_RAW]}"


def keep_dead_letter(task: str, reason: str, message: Any) -> None:
    """Store the raw message; a failure to store is logged, never raised into the consumer."""
    try:
        from retry_pipeline.tasks import service

        svc = service()
        with svc.store.unit() as u:
            u.add_dead_letter(task, reason, _raw(message), svc.clock.now())
    except Exception:
        log.exception("could not keep dead letter for %s: %s", task, reason)


class DeadLetterConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, keeping undecodable messages as dead letters."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        keep_dead_letter("(undecodable)", f"{type(exc).__name__}: {exc}", message)
        super().on_decode_error(message, exc)


@task_unknown.connect
def _unknown_task(sender: Any = None, name: str = "", message: Any = None, **_: Any) -> None:
    keep_dead_letter(name or "(unknown)", f"unknown task {name!r}", message)


@task_rejected.connect
def _rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    keep_dead_letter("(rejected)", f"rejected message: {exc!r}", message)
