"""Worker hooks: a message the worker cannot take is kept as a dead letter, never dropped.

Celery acknowledges undecodable messages (a pickle body, broken JSON) and rejects
unknown tasks after logging them; these hooks first store the raw message in the
dead-letter table (``retry-pipeline dead-letters``). Enabled with
``worker_consumer = "retry_pipeline.worker:DeadLetterConsumer"`` in celeryconfig.py.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import task_rejected, task_unknown
from celery.worker.consumer import Consumer

from retry_pipeline.errors import MessageRefused

log = logging.getLogger(__name__)
MAX_RAW = 65_536


def _raw(message: Any) -> str:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes):
        body = body[:MAX_RAW].decode("utf-8", errors="replace")
    headers = getattr(message, "headers", {}) or {}
    content_type = getattr(message, "content_type", "?")
    return f"content-type={content_type} task={headers.get('task')} body={str(body)[:MAX_RAW]}"


def keep_dead_letter(task: str, reason: str, raw: str) -> None:
    """Store a refused message; a failure to store is logged, never raised into the consumer."""
    try:
        from retry_pipeline.tasks import service

        service().keep_dead_letter(task, reason, raw)
    except Exception:
        log.exception("could not keep dead letter for %s: %s", task, reason)


class DeadLetterConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, keeping undecodable and malformed messages as dead letters."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        keep_dead_letter("(undecodable)", f"{type(exc).__name__}: {exc}", _raw(message))
        super().on_decode_error(message, exc)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors or ())

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:
                # A body Celery cannot turn into a task (e.g. a JSON object instead of
                # [args, kwargs, embed]) would crash the worker on every redelivery.
                keep_dead_letter("(malformed)", f"{type(exc).__name__}: {exc}", _raw(message))
                message.ack()

        return on_task_received


class DeadLetterTask(Task):  # type: ignore[misc]
    """Base of the pipeline's tasks: a task that fails for good leaves a dead letter.

    Covers what the task body cannot see: wrong arguments (a TypeError at call
    time) and permanent database errors after the task's own retries. A task that
    refused its message (``MessageRefused``) kept the dead letter itself: it fails
    (Flower's Failed tab) without a second one, a retry or a traceback in the log.
    """

    throws = (MessageRefused,)
    resultrepr_maxsize = 32_768  # a slot's result names up to 200 applications (Flower)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from retry_pipeline.service.letters import raw_text

        if isinstance(exc, MessageRefused):
            return

        raw = raw_text({"args": args, "kwargs": kwargs})
        keep_dead_letter(self.name, f"{type(exc).__name__}: {exc}", raw)


@task_unknown.connect
def _unknown_task(sender: Any = None, name: str = "", message: Any = None, **_: Any) -> None:
    keep_dead_letter(name or "(unknown)", f"unknown task {name!r}", _raw(message))


@task_rejected.connect
def _rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    keep_dead_letter("(rejected)", f"rejected message: {exc!r}", _raw(message))
