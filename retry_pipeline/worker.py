"""Worker hooks: a message the worker cannot take is kept as a dead letter, never dropped.

Celery acknowledges undecodable messages (a pickle body, broken JSON) and rejects
unknown tasks after logging them; these hooks first store the message in the
dead-letter table (``retry-pipeline dead-letters``) and acknowledge it only once its
letter is stored (else it is requeued). Enabled with
``worker_consumer = "retry_pipeline.worker:DeadLetterConsumer"`` in celeryconfig.py.

Hostile messages (issue 12) never reach a decoder: kombu decompresses a body with a
``compression`` header while it builds the ``Message`` (``kombu.message.Message.__init__``),
before any Celery code runs, so the consumer's channel builds its messages through
``guard_channel``: a compressed body, or one over ``RETRY_PIPELINE_MAX_BODY_BYTES``, is
measured (size, SHA-256, first 64 KiB) from its transport form and its ``Message`` is
built from an empty stand-in; the consumer then keeps it as a dead letter and acks it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.worker.consumer import Consumer

from retry_pipeline.errors import MessageRefused
from retry_pipeline.model import LETTER_HEAD_BYTES, LetterBody

log = logging.getLogger(__name__)
MAX_RAW = LETTER_HEAD_BYTES
REQUEUE_PAUSE_S = 1.0  # a letter that could not be stored: requeue, without a hot loop
_B64_CHUNK = 4 * 65_536  # base64 characters hashed at a time (a multiple of 4)


# --- dead letters: stored first, acknowledged after ------------------------------------------


def keep_dead_letter(
    task: str,
    reason: str,
    raw: str | bytes,
    *,
    headers: Mapping[str, Any] | None = None,
    whole: LetterBody | None = None,
) -> bool:
    """Store a refused message; False (logged, never raised) when it could not be stored."""
    try:
        from retry_pipeline.tasks import service

        service().keep_dead_letter(task, reason, raw, headers=headers, whole=whole)
    except Exception:
        log.exception("could not keep dead letter for %s: %s", task, reason)
        return False
    return True


def _headers(message: Any) -> dict[str, Any]:
    headers = getattr(message, "headers", None)
    out = dict(headers) if isinstance(headers, Mapping) else {"headers": repr(headers)}
    out["content_type"] = getattr(message, "content_type", None)
    out["content_encoding"] = getattr(message, "content_encoding", None)
    return out


def _body(message: Any) -> bytes:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes):
        return body
    return str(body).encode("utf-8", "surrogatepass")


def _task_of(headers: Mapping[str, Any], default: str) -> str:
    task = headers.get("task")
    return task if isinstance(task, str) and task else default


def _keep_message(message: Any, task: str, reason: str) -> bool:
    return keep_dead_letter(task, reason, _body(message), headers=_headers(message))


def _requeue(message: Any) -> None:
    """The letter could not be stored: give the message back to the broker."""
    time.sleep(REQUEUE_PAUSE_S)
    try:
        message.reject(requeue=True)
    except Exception:
        log.exception("could not requeue a message whose dead letter was not stored")


# --- hostile messages: refused from their transport form ---------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused before decoding, and what its dead letter keeps."""

    reason: str
    headers: dict[str, Any]
    head: bytes
    whole: LetterBody
    stand_in: Any  # what the Message is built from instead (an empty body)


def _measure_base64(text: str) -> tuple[bytes, LetterBody] | None:
    """Head, size and hash of a base64 body, decoded a chunk at a time."""
    digest, head, size = hashlib.sha256(), b"", 0
    compact = text.replace("\n", "").replace("\r", "")
    try:
        for start in range(0, len(compact), _B64_CHUNK):
            chunk = base64.b64decode(compact[start : start + _B64_CHUNK], validate=True)
            digest.update(chunk)
            size += len(chunk)
            if len(head) < LETTER_HEAD_BYTES:
                head += chunk[: LETTER_HEAD_BYTES - len(head)]
    except (binascii.Error, ValueError):
        return None
    return head, LetterBody(head, size, digest.hexdigest())


def _measure(body: Any, encoding: Any) -> tuple[int, Any]:
    """(size in bytes of the body as sent, a lazy measurer) without decoding the body."""
    if isinstance(body, str) and encoding == "base64":
        padding = len(body) - len(body.rstrip("="))
        return len(body) * 3 // 4 - padding, lambda: _measure_base64(body)
    data = body if isinstance(body, bytes) else str(body or "").encode("utf-8", "surrogatepass")
    whole = LetterBody(data[:LETTER_HEAD_BYTES], len(data), hashlib.sha256(data).hexdigest())
    return len(data), lambda: (whole.head, whole)


def inspect_raw(raw: Any, max_body_bytes: int) -> Refusal | None:
    """A refusal when the raw transport message is compressed or over the cap; else None.

    ``raw`` is what the channel builds a ``Message`` from: a dict for kombu's virtual
    transports (Redis), an ``amqp`` message for RabbitMQ.
    """
    if isinstance(raw, Mapping):
        headers = raw.get("headers") or {}
        properties = raw.get("properties") or {}
        body, encoding = raw.get("body"), properties.get("body_encoding")
        content = (raw.get("content-type"), raw.get("content-encoding"))
    else:
        properties = getattr(raw, "properties", None) or {}
        headers = properties.get("application_headers") or {}
        body, encoding = getattr(raw, "body", b""), None
        content = (properties.get("content_type"), properties.get("content_encoding"))
    if not isinstance(headers, Mapping):
        return None  # Celery refuses it as an unknown message (a dead letter)
    compression = headers.get("compression")
    size, measure = _measure(body, encoding)
    if compression is None and size <= max_body_bytes:
        return None
    if compression is not None:
        reason = (
            f"compressed body ({str(compression)[:80]}) refused before decoding: "
            f"compression is not accepted ({size} bytes as sent)"
        )
    else:
        reason = (
            f"body of {size} bytes exceeds RETRY_PIPELINE_MAX_BODY_BYTES={max_body_bytes}; "
            "refused before decoding"
        )
    measured = measure()
    if measured is None:
        head, whole = b"", LetterBody(b"", size, "")
    else:
        head, whole = measured
    kept = {str(k): v for k, v in headers.items()}
    kept["content_type"], kept["content_encoding"] = content
    stripped = {k: v for k, v in headers.items() if k != "compression"}
    if isinstance(raw, Mapping):
        stand_in: Any = {**raw, "body": "", "headers": stripped}
    else:
        stand_in = SimpleNamespace(
            body=b"",
            properties={**properties, "application_headers": stripped},
            delivery_tag=getattr(raw, "delivery_tag", None),
            delivery_info=getattr(raw, "delivery_info", {}),
        )
    return Refusal(reason, kept, head, whole, stand_in)


def guard_channel(channel: Any, max_body_bytes: int) -> None:
    """Make ``channel`` build hostile messages from an empty stand-in (see the module doc)."""
    base = channel.Message
    if getattr(base, "guards_hostile", False):
        return

    class GuardedMessage(base):  # type: ignore[misc,valid-type]
        guards_hostile = True

        def __init__(self, payload: Any, *args: Any, **kwargs: Any) -> None:
            self.refusal = inspect_raw(payload, max_body_bytes)
            if self.refusal is None:
                super().__init__(payload, *args, **kwargs)
                return
            super().__init__(self.refusal.stand_in, *args, **kwargs)
            if hasattr(self, "_raw"):
                self._raw = payload  # a requeue restores the message as it came

    channel.Message = GuardedMessage


def _max_body_bytes() -> int:
    from retry_pipeline.tasks import settings

    return settings().max_body_bytes


class DeadLetterConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, keeping hostile, undecodable and malformed messages as dead letters."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if _keep_message(message, "(undecodable)", f"{type(exc).__name__}: {exc}"):
            super().on_decode_error(message, exc)  # logs and acks
        else:
            _requeue(message)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if _keep_message(message, "(rejected)", "rejected message: not a task message"):
            super().on_unknown_message(body, message)
        else:
            _requeue(message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _task_of(_headers(message), "(unknown)")
        if _keep_message(message, name, f"unknown task {name!r}"):
            super().on_unknown_task(body, message, exc)
        else:
            _requeue(message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if _keep_message(message, "(rejected)", f"rejected message: {exc!r}"):
            super().on_invalid_task(body, message, exc)
        else:
            _requeue(message)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors or ())
        if getattr(self, "task_consumer", None) is not None:
            guard_channel(self.task_consumer.channel, _max_body_bytes())

        def on_task_received(message: Any) -> Any:
            refusal: Refusal | None = getattr(message, "refusal", None)
            if refusal is not None:
                task = _task_of(refusal.headers, "(refused)")
                kept = keep_dead_letter(
                    task, refusal.reason, refusal.head, headers=refusal.headers,
                    whole=refusal.whole,
                )  # fmt: skip
                return message.ack() if kept else _requeue(message)
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:
                # A body Celery cannot turn into a task (e.g. a JSON object instead of
                # [args, kwargs, embed]) would crash the worker on every redelivery.
                if _keep_message(message, "(malformed)", f"{type(exc).__name__}: {exc}"):
                    message.ack()
                else:
                    _requeue(message)

        return on_task_received


class DeadLetterTask(Task):  # type: ignore[misc]
    """Base of the pipeline's tasks: a task that fails for good leaves a dead letter.

    Covers what the task body cannot see: wrong arguments (a TypeError at call
    time) and permanent database errors after the task's own retries. When the letter
    cannot be stored either, the message is requeued (``Reject``), not acknowledged. A
    task that refused its message (``MessageRefused``) kept the dead letter itself: it
    fails (Flower's Failed tab) without a second one, a retry or a traceback in the log.
    """

    throws = (MessageRefused,)
    resultrepr_maxsize = 32_768  # a slot's result names up to 200 applications (Flower)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore, MessageRefused):
            raise
        except Exception as exc:
            from retry_pipeline.service.letters import raw_text

            raw = raw_text({"args": args, "kwargs": kwargs})
            if keep_dead_letter(self.name, f"{type(exc).__name__}: {exc}", raw):
                exc.dead_lettered = True  # type: ignore[attr-defined]
                raise
            time.sleep(REQUEUE_PAUSE_S)
            raise Reject(f"dead letter not stored: {type(exc).__name__}", requeue=True) from exc

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if getattr(exc, "dead_lettered", False):
            return  # kept by __call__
        from retry_pipeline.service.letters import raw_text

        if isinstance(exc, MessageRefused):
            return

        raw = raw_text({"args": args, "kwargs": kwargs})
        keep_dead_letter(self.name, f"{type(exc).__name__}: {exc}", raw)
