"""One-report messages accepted in micro-batches (issue 11): a bounded buffer in the worker.

The examination worker sends ``retry_pipeline.report_missing`` one report per
message. The worker's consumer (its main process) does not hand each message to the
pool: it keeps it in a bounded buffer, and every ``FLUSH_MS`` milliseconds (or at
``FLUSH_EVERY`` messages) one pool process accepts the whole buffer in one
transaction (``service.accept_reports``), with the same per-report rules and dead
letters as one message at a time. Each message is acknowledged only after that
commit (acks_late). If the batch fails as a whole (the database is down, a pool
process dies), nothing of it was committed and every message of it goes the
ordinary one-message way instead: the task's own retries, dead letters, requeue on
a lost worker. A message with an ETA, or one the batch cannot read, goes that way
from the start.

Enabled by ``Strategy`` on the task (``retry_pipeline.tasks.report_missing``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.utils.imports import symbol_by_name
from celery.worker.request import create_request_cls
from celery.worker.state import task_reserved

log = logging.getLogger(__name__)

FLUSH_MS = 5  # the buffer is flushed this often ...
FLUSH_EVERY = 200  # ... or as soon as it holds this many messages
MAX_PENDING = 2000  # buffered + in the pool: above it the consumer fetches no more ahead
IN_POOL = 1  # batches in the pool at once: while one runs, the next one gathers
DONE, ONE_BY_ONE = "done", "one-by-one"


def accept_buffered(messages: list[tuple[list[Any], dict[str, Any]]]) -> list[str]:
    """In a pool process: accept the buffered reports in one transaction.

    Returns, per message, ``DONE`` (committed, or refused with its dead letter kept)
    or ``ONE_BY_ONE`` (to be run as an ordinary single message). Never raises.
    """
    from retry_pipeline import names
    from retry_pipeline.errors import InvalidReport
    from retry_pipeline.messages import parse_report
    from retry_pipeline.tasks import _refuse, service

    statuses = [ONE_BY_ONE] * len(messages)
    refusals: list[tuple[int, str, Any]] = []
    parsed: list[tuple[int, Any, Any]] = []
    for index, (args, kwargs) in enumerate(messages):
        if len(args) == 1 and not kwargs:
            message: Any = args[0]
        elif not args:
            message = kwargs
        else:
            continue  # malformed: the single path refuses it with its own reason
        try:
            parsed.append((index, message, parse_report(message)))
        except InvalidReport as exc:
            refusals.append((index, str(exc), message))
    try:
        results = service().accept_reports([report for _, _, report in parsed])
    except Exception:
        log.exception("a batch of %d reports failed; each goes one by one", len(messages))
        return statuses  # nothing was committed
    for (index, message, _), result in zip(parsed, results, strict=True):
        if isinstance(result, InvalidReport):
            refusals.append((index, str(result), message))
        else:
            statuses[index] = DONE
    for index, reason, message in refusals:
        try:
            _refuse(names.REPORT_MISSING, reason, message)
            statuses[index] = DONE
        except Exception:
            log.exception("could not keep a dead letter; the message goes one by one")
    return statuses


class _Buffer:
    """The consumer-side buffer of one worker (its main process)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.requests: list[Any] = []
        self.pending = 0  # buffered or in the pool, not yet acknowledged
        self.batches = 0  # batches in the pool
        self.slots = IN_POOL
        self.timer: Any = None  # a kombu timer entry

    def put(self, req: Any) -> bool:
        """Buffer ``req``; False when the buffer is full (the caller runs it alone)."""
        if self.pending >= MAX_PENDING:
            return False
        self.requests.append(req)
        self.pending += 1
        self.consumer.qos.increment_eventually()  # as for an ETA message: keep fetching
        if self.timer is None:
            self.timer = self.consumer.timer.call_repeatedly(FLUSH_MS / 1000, self.flush)
        if len(self.requests) >= FLUSH_EVERY:
            self.flush(full=True)
        return True

    def flush(self, *, full: bool = False) -> None:
        """Hand the buffer to a pool process: ``IN_POOL`` batches at a time,
        so that while it is busy the buffer grows instead of queueing
        many small batches (unless it is ``full``)."""
        if not self.requests:
            if self.timer is not None and self.pending == 0:
                self.timer.cancel()
                self.timer = None
            return
        if self.batches >= self.slots and not full:
            return
        requests, self.requests = self.requests, []
        self.batches += 1
        messages = [(list(r.args), dict(r.kwargs)) for r in requests]

        def on_return(statuses: Any) -> None:
            if not isinstance(statuses, list) or len(statuses) != len(requests):
                statuses = [ONE_BY_ONE] * len(requests)
            self._finished(requests, [status == DONE for status in statuses])

        def on_error(*_: Any) -> None:  # the pool process died: nothing was acknowledged
            self._finished(requests, [False] * len(requests))

        self.consumer.pool.apply_async(
            accept_buffered, (messages,), callback=on_return, error_callback=on_error
        )

    def _finished(self, requests: list[Any], done: list[bool]) -> None:
        self.batches -= 1
        for req, ok in zip(requests, done, strict=True):
            self._settle(req, ok)
        self.flush()  # what gathered meanwhile goes at once

    def _settle(self, req: Any, done: bool) -> None:
        self.pending -= 1
        self.consumer.qos.decrement_eventually()
        if done:
            req.acknowledge()
            req.send_event("task-succeeded", result="accepted in a batch", runtime=0.0)
        else:
            task_reserved(req)
            self.consumer.on_task_request(req)  # the ordinary way: one message, own retries


def strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Any:
    """A task strategy (``Task.Strategy``): buffer plain one-report messages."""
    from celery.worker.strategy import default, hybrid_to_proto2, proto1_to_proto2

    ordinary = default(task, app, consumer)
    Req = create_request_cls(
        symbol_by_name(task.Request), task, consumer.pool, consumer.hostname,
        consumer.event_dispatcher, app=app,
    )  # fmt: skip
    buffer = _Buffer(consumer)

    def handler(message: Any, raw: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        if raw is None and "args" not in message.payload:
            body, headers, decoded, utc = (
                message.body, message.headers, False, app.uses_utc_timezone(),
            )  # fmt: skip
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, raw)
        if headers.get("eta") or headers.get("retries") or callbacks:
            return ordinary(message, raw, ack, reject, callbacks, **kw)
        req = Req(
            message, on_ack=ack, on_reject=reject, app=app, hostname=consumer.hostname,
            eventer=consumer.event_dispatcher, task=task,
            connection_errors=consumer.connection_errors,
            body=body, headers=headers, decoded=decoded, utc=utc,
        )  # fmt: skip
        signals.task_received.send(sender=consumer, request=req)
        req.send_event(  # Flower and the events monitor see the report as a task
            "task-received", name=req.name, args=req.argsrepr, kwargs=req.kwargsrepr,
            root_id=req.root_id, parent_id=req.parent_id, retries=0, eta=None, expires=None,
        )  # fmt: skip
        if not buffer.put(req):
            task_reserved(req)
            consumer.on_task_request(req)
        return None

    return handler
