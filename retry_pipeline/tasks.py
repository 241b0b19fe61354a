"""Celery tasks: thin entry points that parse the message and call the pipeline.

Task names (``retry_pipeline.names``) are the public interface: the examination
worker sends ``retry_pipeline.report_missing`` by name, beat sends
``retry_pipeline.tick`` on the grid.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_process_init
from sqlalchemy.exc import InterfaceError, OperationalError

from retry_pipeline import names
from retry_pipeline.calendar import BusinessCalendar, parse_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidInstant, InvalidReport
from retry_pipeline.messages import parse_report
from retry_pipeline.schedules import GridSchedule
from retry_pipeline.service.letters import raw_text
from retry_pipeline.service.pipeline import Pipeline

log = logging.getLogger(__name__)

app = Celery("retry_pipeline", task_cls="retry_pipeline.worker:DeadLetterTask")
app.config_from_object("celeryconfig")

MAX_BATCH = 500

# The database is unreachable: try again (about an hour in all), then a dead letter.
DB_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 80,
}


@cache
def settings() -> Settings:
    """Settings of this process, read once."""
    return Settings.from_env()


@cache
def service() -> Pipeline:
    """The pipeline of this process, built on first use (after a prefork fork)."""
    from retry_pipeline.bootstrap import bootstrap

    return bootstrap(settings(), app, node=_NODE[0] if _NODE else None)


_NODE: list[str] = []  # this worker's node name (set before the prefork children fork)


@celeryd_init.connect
def _node_name(sender: Any = None, **_: Any) -> None:
    # celeryd_init's sender is the node name (``-n``), e.g. ``worker1@host``.
    _NODE[:] = [str(sender)] if sender else []


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections.
    service.cache_clear()


app.conf.beat_schedule = {
    "grid-tick": {
        "task": names.TICK,
        "schedule": GridSchedule(BusinessCalendar(settings())),
        "options": {"queue": settings().queue, "expires": 600},
    },
}
app.conf.beat_max_loop_interval = settings().beat_max_interval_s


def _refuse(task: str, reason: str, payload: Any) -> dict[str, Any]:
    letter = service().keep_dead_letter(task, reason, raw_text(payload))
    return {"status": "refused", "reason": reason, "dead_letter": letter}


# In a worker, one-report messages are accepted in micro-batches (intake_buffer.py).
@app.task(name=names.REPORT_MISSING, Strategy="retry_pipeline.intake_buffer:strategy", **DB_RETRY)
def report_missing(*args: Any, **fields: Any) -> dict[str, Any]:
    """A missing-certificate report (R1, R3, R4): start, merge, or auto-correct at once."""
    message: Any = args[0] if len(args) == 1 and not fields else fields
    try:
        if len(args) > 1 or (args and fields):
            message = {"args": list(args), "kwargs": fields}
            raise InvalidReport(f"one report per message, got {len(args)} positional arguments")
        accepted = service().accept_report(parse_report(message))
    except InvalidReport as exc:  # NotARetryTarget (R1) and the skew check included
        return _refuse(names.REPORT_MISSING, str(exc), message)
    return {
        "status": "retry" if accepted.retry else "auto_corrected",
        "chain_id": accepted.chain_id,
        "reason": accepted.reason,
    }


@app.task(name=names.REPORT_MISSING_BATCH, **DB_RETRY)
def report_missing_batch(reports: Any) -> dict[str, int]:
    """Many reports in one message and one transaction (``client.report_missing_many``)."""
    task = names.REPORT_MISSING_BATCH
    if not isinstance(reports, list) or not 1 <= len(reports) <= MAX_BATCH:
        _refuse(task, f"a batch is a list of 1..{MAX_BATCH} reports", reports)
        return {"accepted": 0, "refused": 1}
    parsed, refused = [], 0
    for message in reports:
        try:
            parsed.append((message, parse_report(message)))
        except InvalidReport as exc:
            _refuse(task, str(exc), message)
            refused += 1
    results = service().accept_reports([report for _, report in parsed])
    for (message, _), result in zip(parsed, results, strict=True):
        if isinstance(result, InvalidReport):
            _refuse(task, str(result), message)
            refused += 1
    return {"accepted": len(reports) - refused, "refused": refused}


def _slot_of(task: str, slot: Any, payload: Any) -> Any:
    try:
        return parse_instant(slot)
    except InvalidInstant as exc:
        _refuse(task, str(exc), payload)
        return None


@app.task(name=names.ATTEMPT_SLOT)
def attempt_slot(slot: str) -> dict[str, int]:
    """The attempts of every chain due at ``slot``, decided in batches (DESIGN 2, 3)."""
    at = _slot_of(names.ATTEMPT_SLOT, slot, {"slot": slot})
    return {} if at is None else service().run_slot(at)


@app.task(name=names.ATTEMPT)
def attempt(chain_id: str, attempt_no: int, slot: str) -> dict[str, int]:
    """One chain's attempt, as older senders send it: its slot decides it (DESIGN 3).

    A duplicate or stale message finds the chain no longer due at ``slot``.
    """
    at = _slot_of(names.ATTEMPT, slot, [chain_id, attempt_no, slot])
    return {} if at is None else service().run_slot(at)


@app.task(name=names.TICK)
def tick() -> dict[str, int]:
    """The grid tick (DESIGN 4): park at close, release at 08:30, re-send due attempts."""
    result = service().tick()
    return {
        "parked": result.parked,
        "dispatched": len(result.dispatched),
        "relayed": result.relayed,
    }


@app.task(name=names.CONFIRM_OUTCOME)
def confirm_outcome(idempotency_key: str) -> bool:
    """The examination side confirms it received an outcome (stops the relay's re-sends)."""
    return service().confirm_outcome(str(idempotency_key))


@app.task(name=names.CLOSE, **{**DB_RETRY, "retry_backoff_max": 30, "max_retries": 60})
def close(at: str | None = None) -> int:
    """An explicit OSS close signal (R10); ``at`` defaults to now. Never lost to a DB outage."""
    when = None
    if at is not None:
        when = _slot_of(names.CLOSE, at, {"at": at})
        if when is None:
            return 0
    try:
        return service().record_close(when)
    except InvalidInstant as exc:  # R10: not on today's Japan date
        _refuse(names.CLOSE, str(exc), {"at": at})
        return 0
