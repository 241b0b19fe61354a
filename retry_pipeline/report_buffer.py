"""One-report messages taken in micro-batches (issue 11): a Celery ``Strategy`` for
``retry_pipeline.report_missing``.

The examination worker sends one report per message. Deciding each in its own task and
transaction costs a pool round trip and a commit per report; here the consumer keeps the
plain ones (no ETA, expiry, revocation or rate limit) in a bounded buffer and hands them
to a pool process together, where they are decided in one transaction
(``Pipeline.accept_reports``). The rules stay per report:

- each report's own sent-at header (R4a), its own receipt (DESIGN 11), its own dead
  letter and failed task when it is refused (Flower's Failed tab);
- a message is acknowledged only after the transaction that decided it committed;
- whatever the batch cannot settle (the database is unreachable, a dead letter could
  not be stored, the pool process died) goes down the ordinary one-message task path,
  with its retries, dead letters and ``task_reject_on_worker_lost``.

The buffer is flushed when it holds ``RETRY_PIPELINE_REPORT_BATCH`` reports, or
``RETRY_PIPELINE_REPORT_FLUSH_MS`` after its first one; while every pool process is busy
with a batch it keeps filling (up to the batch size, at most ``MAX_WAIT_S``). Buffered
messages are unacknowledged, so the buffer raises the consumer's prefetch by one per
message (at most ``CREDIT_BATCHES`` batches' worth) and lowers it when they are settled.
A batched report sends no task-received or task-started event, only task-succeeded or
task-failed, carrying the task's name and arguments.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from celery.utils.imports import symbol_by_name
from celery.worker.request import create_request_cls
from celery.worker.state import task_ready, task_reserved
from celery.worker.strategy import default

from retry_pipeline.client import SENT_AT_HEADER
from retry_pipeline.errors import InvalidReport
from retry_pipeline.logs import bind, task_fields
from retry_pipeline.messages import parse_report

log = logging.getLogger(__name__)

OK, REFUSED, ALONE = "ok", "refused", "alone"  # what became of one message of a batch
MAX_WAIT_S = 1.0  # a report waits at most this long for a busy pool to take its batch
CREDIT_BATCHES = 4  # prefetch raised by at most this many batches of buffered messages


def buffered(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """The strategy: plain messages into the buffer, any other one Celery's ``default``."""
    fallback = default(task, app, consumer, **kwargs)
    from retry_pipeline.tasks import settings

    size, flush_ms = settings().report_batch, settings().report_flush_ms
    if size <= 1 or getattr(consumer, "hub", None) is None:
        return fallback  # off, or no event loop to run the buffer's timer on
    buffer = ReportBuffer(consumer, size, flush_ms / 1000)
    Req = create_request_cls(
        symbol_by_name(task.Request), task, consumer.pool, consumer.hostname,
        consumer.event_dispatcher, app=app,
    )  # fmt: skip
    revoked = consumer.controller.state.revoked
    utc = app.uses_utc_timezone()
    limited = task.rate_limit is not None and not consumer.disable_rate_limits

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        headers = message.headers
        if body is not None or limited or not _plain(message, headers, revoked):
            return fallback(message, body, ack, reject, callbacks, **kw)
        req = Req(
            message, on_ack=ack, on_reject=reject, app=app, hostname=consumer.hostname,
            eventer=consumer.event_dispatcher, task=task,
            connection_errors=consumer.connection_errors, body=message.body,
            headers=headers, decoded=False, utc=utc,
        )  # fmt: skip
        signals.task_received.send(sender=consumer, request=req)
        task_reserved(req)
        if callbacks:
            for callback in callbacks:
                callback(req)
        args, kwargs_, _embed = message.payload
        buffer.add(req, (list(args), dict(kwargs_), headers.get(SENT_AT_HEADER)))
        return None

    return handler


def _plain(message: Any, headers: Any, revoked: Any) -> bool:
    """A protocol 2 message this buffer may take; anything else goes Celery's own way."""
    if not isinstance(headers, dict) or headers.get("eta") or headers.get("expires"):
        return False
    if headers.get("id") in revoked:
        return False
    try:
        payload = message.payload  # what Celery's default strategy decodes here too
    except Exception:
        return False  # the default path dead-letters it (DeadLetterConsumer)
    return (
        isinstance(payload, (list, tuple))
        and len(payload) == 3
        and isinstance(payload[0], (list, tuple))
        and isinstance(payload[1], dict)
    )


@dataclass
class ReportBuffer:
    """The consumer-side buffer; it runs in the worker's main process (its event loop)."""

    consumer: Any
    size: int
    flush_s: float
    waiting: list[tuple[Any, tuple[Any, ...]]] = field(default_factory=list)
    since: float = 0.0  # when the oldest waiting report arrived (monotonic)
    timer: Any = None
    in_flight: int = 0  # batches handed to the pool and not back yet
    credit: int = 0  # prefetch added for buffered, unsettled messages

    def add(self, req: Any, item: tuple[Any, ...]) -> None:
        if self.credit < CREDIT_BATCHES * self.size:
            self.consumer.qos.increment_eventually()
            self.credit += 1
            req.report_credit = True
        if not self.waiting:
            self.since = time.monotonic()
        self.waiting.append((req, item))
        if len(self.waiting) >= self.size:
            self.flush()
        elif self.timer is None:
            self.timer = self.consumer.timer.call_after(self.flush_s, self._due, priority=5)

    def _busy(self) -> bool:
        pool = self.consumer.pool
        processes = getattr(pool, "num_processes", None) or getattr(pool, "limit", None) or 1
        return self.in_flight >= processes

    def _due(self) -> None:
        self.timer = None
        if not self.waiting:
            return
        if self._busy() and time.monotonic() - self.since < MAX_WAIT_S:
            self.timer = self.consumer.timer.call_after(self.flush_s, self._due, priority=5)
            return
        self.flush()

    def flush(self) -> None:
        """Hand the waiting reports to a pool process as one batch."""
        if self.timer is not None:
            self.consumer.timer.cancel(self.timer)
            self.timer = None
        batch, self.waiting = self.waiting, []
        if not batch:
            return
        reqs = [req for req, _ in batch]
        started = time.monotonic()
        self.in_flight += 1

        def back(results: Any) -> None:
            self.in_flight -= 1
            self._settle(reqs, results, time.monotonic() - started)
            if self.waiting and len(self.waiting) >= self.size // 2:
                self.flush()

        def lost(exc_info: Any) -> None:
            self.in_flight -= 1
            log.error("a batch of %d reports was lost (%s); each goes again alone",
                      len(reqs), getattr(exc_info, "exception", exc_info))  # fmt: skip
            self._settle(reqs, [(ALONE, None)] * len(reqs), 0.0)

        try:
            self.consumer.pool.apply_async(
                take_reports, args=([item for _, item in batch],), callback=back,
                error_callback=lost,
            )  # fmt: skip
        except Exception:
            log.exception("could not hand %d reports to the pool; each goes alone", len(reqs))
            self.in_flight -= 1
            self._settle(reqs, [(ALONE, None)] * len(reqs), 0.0)

    def _settle(self, reqs: list[Any], results: Any, runtime: float) -> None:
        if not isinstance(results, list) or len(results) != len(reqs):
            results = [(ALONE, None)] * len(reqs)
        taken = refused = 0
        for req, (kind, value) in zip(reqs, results, strict=True):
            if getattr(req, "report_credit", False):
                self.consumer.qos.decrement_eventually()
                self.credit -= 1
            if kind == ALONE:
                self._alone(req)
                continue
            task_ready(req, successful=kind == OK)
            req.acknowledge()  # the transaction that decided it has committed
            if kind == OK:
                taken += 1
                _event(req, "task-succeeded", runtime, result=repr(value))
            else:
                refused += 1
                _event(req, "task-failed", runtime, exception=value, traceback=None)
        if taken or refused:
            log.info("took %d reports in one batch (%d refused) in %.3f s",
                     taken + refused, refused, runtime)  # fmt: skip

    def _alone(self, req: Any) -> None:
        """The ordinary one-message path: the task body, its retries and dead letters."""
        try:
            self.consumer.on_task_request(req)
        except Exception:
            log.exception("report %s could not go alone; it is requeued", req.id)
            req.reject(requeue=True)


def _event(req: Any, kind: str, runtime: float, **fields: Any) -> None:
    """The task's outcome event, with the fields a task-received event would have brought."""
    try:
        req.send_event(kind, name=req.name, args=req.argsrepr, kwargs=req.kwargsrepr,
                       runtime=runtime, **fields)  # fmt: skip
    except Exception:  # an event is for monitoring: never a reason to lose the ack
        log.exception("could not send %s for report %s", kind, req.id)


# --- in the pool process --------------------------------------------------------------------


def take_reports(items: list[tuple[list[Any], dict[str, Any], Any]]) -> list[tuple[str, Any]]:
    """Decide a batch of one-report messages in one transaction; never raises.

    Returns, per message: ``(OK, result)``, ``(REFUSED, "refused (dead letter #N): why")``
    or ``(ALONE, None)`` for a message the one-message path must take.
    """
    from retry_pipeline import names, tasks

    out: list[tuple[str, Any]] = [(ALONE, None)] * len(items)

    def refuse(index: int, reason: str, message: Any) -> None:
        try:
            with bind(**task_fields([message], {})):  # the log line names its application
                letter = tasks.keep_refused(names.REPORT_MISSING, reason, message)
        except Exception:
            log.exception("dead letter not stored; the report goes alone")
            return
        out[index] = (REFUSED, repr(tasks.refused(letter, reason)))

    parsed: list[tuple[int, Any, Any, Any]] = []
    for index, (args, fields, sent_at) in enumerate(items):
        try:
            message = tasks.report_message(args, fields)
        except tasks.WrongShape as exc:
            refuse(index, str(exc), exc.message)
            continue
        try:
            parsed.append((index, parse_report(message), message, tasks.parse_sent_at(sent_at)))
        except InvalidReport as exc:
            refuse(index, str(exc), message)
    if not parsed:
        return out
    try:
        results = tasks.service().accept_reports(
            [report for _, report, _, _ in parsed], each_sent_at=[at for *_, at in parsed]
        )
    except Exception as exc:  # the database: each report retries on its own path
        log.warning("a batch of %d reports goes alone: %s: %s", len(parsed),
                    type(exc).__name__, exc)  # fmt: skip
        return out
    for (index, _, message, _), result in zip(parsed, results, strict=True):
        if isinstance(result, InvalidReport):  # R1, future, R4 conflict, R4a stale
            refuse(index, str(result), message)
        else:
            out[index] = (OK, tasks.accepted_result(result))
    return out
