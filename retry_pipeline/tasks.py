"""Celery tasks: thin entry points that parse the message and call the service.

Task names are the public interface: ``retry_pipeline.report_missing`` (the
examination worker sends it by name), ``retry_pipeline.attempt``,
``retry_pipeline.tick`` (beat, on the grid), ``retry_pipeline.close``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready
from sqlalchemy.exc import InterfaceError, OperationalError

from retry_pipeline import signing
from retry_pipeline.calendar import BusinessCalendar, parse_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import InvalidInstant, InvalidReport, RegistryUnavailable
from retry_pipeline.heartbeat import WorkerHeartbeat
from retry_pipeline.messages import parse_report
from retry_pipeline.schedules import GridSchedule, retry_countdown
from retry_pipeline.service import RetryService

log = logging.getLogger(__name__)
# A read that failed: the attempt decides nothing and waits within its slot.
UNREADABLE = (RegistryUnavailable, OperationalError, InterfaceError)

app = Celery("retry_pipeline", task_cls="retry_pipeline.worker:DeadLetterTask")
app.config_from_object("celeryconfig")
app.steps["consumer"].add(WorkerHeartbeat)  # worker heartbeats in SQL (retry-pipeline health)


@cache
def settings() -> Settings:
    """Settings of this process, read once."""
    return Settings.from_env()


@cache
def service() -> RetryService:
    """The service of this process, built on first use (after a prefork fork)."""
    from retry_pipeline.bootstrap import bootstrap

    return bootstrap(settings(), app)


SIGNED = signing.configure(app, settings())  # docs/security.md


@worker_ready.connect
def _warn_unsigned(**_: Any) -> None:
    if not SIGNED:
        log.warning(signing.UNSIGNED_WARNING)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections.
    service.cache_clear()


app.conf.beat_schedule = {
    "grid-tick": {
        "task": "retry_pipeline.tick",
        "schedule": GridSchedule(BusinessCalendar(settings())),
        "options": {"queue": settings().queue, "expires": 600},
    },
}
app.conf.beat_max_loop_interval = settings().beat_max_interval_s


def _dead_letter(task: str, reason: str, payload: Any) -> dict[str, Any]:
    try:
        raw = json.dumps(payload, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        raw = repr(payload)
    svc = service()
    with svc.store.unit() as u:
        letter = u.add_dead_letter(task, reason, raw, svc.clock.now())
    log.error("refused %s (dead letter %d): %s", task, letter, reason)
    return {"status": "refused", "reason": reason, "dead_letter": letter}


@app.task(
    name="retry_pipeline.report_missing",
    # The database is unreachable: try again (about an hour in all), then a dead letter.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=80,
)
def report_missing(*args: Any, **fields: Any) -> dict[str, Any]:
    """A missing-certificate report (R1, R3, R4): start, merge, or auto-correct at once."""
    message: Any = args[0] if len(args) == 1 and not fields else fields
    try:
        if len(args) > 1 or (args and fields):
            message = {"args": list(args), "kwargs": fields}
            raise InvalidReport(f"one report per message, got {len(args)} positional arguments")
        report = parse_report(message)
        accepted = service().accept_report(report)
    except InvalidReport as exc:  # NotARetryTarget (R1) and the skew check included
        return _dead_letter("retry_pipeline.report_missing", str(exc), message)
    return {
        "status": "retry" if accepted.retry else "auto_corrected",
        "chain_id": accepted.chain_id,
        "reason": accepted.reason,
    }


MAX_BATCH = 500


@app.task(
    name="retry_pipeline.report_missing_batch",
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=80,
)
def report_missing_batch(reports: Any) -> dict[str, int]:
    """Many reports in one message and one transaction (``client.report_missing_many``)."""
    task = "retry_pipeline.report_missing_batch"
    if not isinstance(reports, list) or not 1 <= len(reports) <= MAX_BATCH:
        _dead_letter(task, f"a batch is a list of 1..{MAX_BATCH} reports", reports)
        return {"accepted": 0, "refused": 1}
    parsed, refused = [], 0
    for message in reports:
        try:
            parsed.append((message, parse_report(message)))
        except InvalidReport as exc:
            _dead_letter(task, str(exc), message)
            refused += 1
    results = service().accept_reports([report for _, report in parsed])
    for (message, _), result in zip(parsed, results, strict=True):
        if isinstance(result, InvalidReport):
            _dead_letter(task, str(result), message)
            refused += 1
    return {"accepted": len(reports) - refused, "refused": refused}


def _wait_in_slot(task: Any, at: datetime, exc: Exception) -> None:
    """Kei-MOTAS or the database could not be read: nothing was decided; retry in the slot.

    Raises Celery's ``Retry`` with a bounded back-off while the slot lasts; once it is
    over, returns (the grid tick sends an overdue slot again).
    """
    svc = service()
    countdown = retry_countdown(at, svc.clock.now(), svc.step, task.request.retries)
    if countdown is None:
        log.error("slot %s not decided: %s; the grid tick sends it again", at.isoformat(), exc)
        return
    log.warning("slot %s waits %.0f s: %s", at.isoformat(), countdown, exc)
    eta = svc.clock.to_real(svc.clock.now() + timedelta(seconds=countdown))
    raise task.retry(eta=eta, exc=exc, max_retries=None)


@app.task(name="retry_pipeline.attempt", bind=True)
def attempt(self: Any, chain_id: str, attempt_no: int, slot: str) -> str:
    """One attempt of a chain (R8); a stale or duplicate message does nothing (DESIGN 3)."""
    try:
        at = parse_instant(slot)
    except InvalidInstant as exc:
        _dead_letter("retry_pipeline.attempt", str(exc), [chain_id, attempt_no, slot])
        return "refused"
    try:
        return service().run_attempt(chain_id, int(attempt_no), at)
    except UNREADABLE as exc:
        _wait_in_slot(self, at, exc)
        return "unreadable"


@app.task(name="retry_pipeline.attempt_slot", bind=True)
def attempt_slot(self: Any, slot: str) -> dict[str, int]:
    """The attempts of every chain due at ``slot``, decided in batches (DESIGN 2, 3)."""
    try:
        at = parse_instant(slot)
    except InvalidInstant as exc:
        _dead_letter("retry_pipeline.attempt_slot", str(exc), {"slot": slot})
        return {}
    try:
        return service().run_slot(at)
    except UNREADABLE as exc:
        _wait_in_slot(self, at, exc)
        return {"unreadable": 1}


@app.task(name="retry_pipeline.tick")
def tick() -> dict[str, int]:
    """The grid tick (DESIGN 4): park at close, release at 08:30, re-send due attempts."""
    result = service().tick()
    return {
        "parked": result.parked,
        "dispatched": len(result.dispatched),
        "relayed": result.relayed,
    }


@app.task(name="retry_pipeline.confirm_outcome")
def confirm_outcome(idempotency_key: str) -> bool:
    """The examination side confirms it received an outcome (stops the relay's re-sends)."""
    return service().confirm_outcome(str(idempotency_key))


@app.task(
    name="retry_pipeline.close",
    autoretry_for=(OperationalError, InterfaceError),  # R10 must not be lost to a DB outage
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=60,
)
def close(at: str | None = None) -> int:
    """An explicit OSS close signal (R10); ``at`` defaults to now."""
    when = None
    if at is not None:
        try:
            when = parse_instant(at)
        except InvalidInstant as exc:
            _dead_letter("retry_pipeline.close", str(exc), {"at": at})
            return 0
    return service().record_close(when)
