"""Celery tasks: thin entry points that parse the message and call the pipeline.

Task names (``retry_pipeline.names``) are the public interface: the examination
worker sends ``retry_pipeline.report_missing`` by name, beat sends
``retry_pipeline.tick`` on the grid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NoReturn

from celery import Celery
from celery.schedules import crontab
from celery.signals import celeryd_init, worker_process_init, worker_ready
from sqlalchemy.exc import InterfaceError, OperationalError

from retry_pipeline import names, signing
from retry_pipeline.calendar import BusinessCalendar, format_instant, parse_instant
from retry_pipeline.client import SENT_AT_HEADER
from retry_pipeline.config import Settings
from retry_pipeline.errors import (
    InvalidInstant,
    InvalidReport,
    MessageRefused,
    RegistryUnavailable,
)
from retry_pipeline.heartbeat import WorkerHeartbeat
from retry_pipeline.logs import connect_celery
from retry_pipeline.messages import parse_report
from retry_pipeline.schedules import GridSchedule, next_tick_after, retry_countdown
from retry_pipeline.service.intake import Accepted
from retry_pipeline.service.letters import raw_text
from retry_pipeline.service.pipeline import Pipeline
from retry_pipeline.service.receipts import refusal_receipt

log = logging.getLogger(__name__)

app = Celery("retry_pipeline", task_cls="retry_pipeline.worker:DeadLetterTask")
app.config_from_object("celeryconfig")
app.steps["consumer"].add(WorkerHeartbeat)  # worker heartbeats in SQL (retry-pipeline health)
connect_celery()  # RETRY_PIPELINE_LOG_FORMAT=json: worker and beat log JSON lines

MAX_BATCH = 500
# A read that failed: the attempt decides nothing and waits within its slot.
UNREADABLE = (RegistryUnavailable, OperationalError, InterfaceError)
SHOWN_REFUSALS = 200  # refusals a batch's result lists (the first ones), with their count

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
        "task": names.TICK,
        "schedule": GridSchedule(BusinessCalendar(settings())),
        "options": {"queue": settings().queue, "expires": 600},
    },
}
if not settings().clock_file:
    # Issue 12: dead letters are kept DEAD_LETTER_RETENTION_DAYS days (03:15 Japan time).
    # Not on a simulation's scaled clock: beat orders entries by each schedule's own
    # "now", and a real-time entry would sort before the grid once simulated time runs
    # ahead of the wall clock, so beat would stop checking the grid.
    app.conf.beat_schedule["dead-letters-purge"] = {
        "task": names.PURGE_DEAD_LETTERS,
        "schedule": crontab(hour=3, minute=15),
        "options": {"queue": settings().queue, "expires": 3600},
    }
app.conf.beat_max_loop_interval = settings().beat_max_interval_s


REPORT_TASKS = (names.REPORT_MISSING, names.REPORT_MISSING_BATCH)


def keep_refused(task: str, reason: str, payload: Any) -> int:
    """Keep a refused message as a dead letter (and a refused report's receipt); its id."""
    # DESIGN 11: a refused report is answered too, when it names its application.
    receipt = refusal_receipt(payload, reason) if task in REPORT_TASKS else None
    return service().keep_dead_letter(task, reason, raw_text(payload), receipt)


def refused(letter: int, reason: str) -> MessageRefused:
    """The error a refused message's task fails with (Flower's Failed tab)."""
    return MessageRefused(f"refused (dead letter #{letter}): {reason}")


def _refuse(task: str, reason: str, payload: Any) -> NoReturn:
    """Keep the message as a dead letter, then fail the task with the reason (Flower)."""
    raise refused(keep_refused(task, reason, payload), reason)


def parse_sent_at(value: Any) -> datetime | None:
    """R4a: when the sender put the message on the queue (its header), if it said so."""
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except InvalidInstant:
        return None


def _sent_at(request: Any) -> datetime | None:
    return parse_sent_at(request.get(SENT_AT_HEADER) if request is not None else None)


class WrongShape(InvalidReport):
    """A ``report_missing`` message that is not one report; ``message`` is what is kept."""

    def __init__(self, reason: str, message: Any) -> None:
        super().__init__(reason)
        self.message = message


def report_message(args: Sequence[Any], fields: Mapping[str, Any]) -> Any:
    """The one report a ``report_missing`` message carries (positional or as keywords)."""
    if len(args) > 1 or (args and fields):
        shown = {"args": list(args), "kwargs": dict(fields)}
        raise WrongShape(f"one report per message, got {len(args)} positional arguments", shown)
    return args[0] if len(args) == 1 else dict(fields)


def accepted_result(accepted: Accepted) -> dict[str, Any]:
    """A report task's result: what became of the report (Flower shows it)."""
    next_slot = accepted.next_slot
    return {
        "status": "retry" if accepted.retry else "auto_corrected",
        "action": accepted.action.value,
        "chain_id": accepted.chain_id,
        "reason": accepted.reason,
        "next_attempt": None if next_slot is None else format_instant(next_slot),
    }


# Strategy: the consumer takes plain one-report messages in micro-batches (issue 11).
@app.task(
    name=names.REPORT_MISSING, bind=True, Strategy="retry_pipeline.report_buffer:buffered",
    **DB_RETRY,
)  # fmt: skip
def report_missing(self: Any, *args: Any, **fields: Any) -> dict[str, Any]:
    """A missing-certificate report (R1, R3, R4, R4a): start, merge, or auto-correct at once.

    A refused report is kept as a dead letter and its task fails with the reason.
    """
    try:
        message = report_message(args, fields)
    except WrongShape as exc:
        _refuse(names.REPORT_MISSING, str(exc), exc.message)
    try:
        accepted = service().accept_report(parse_report(message), _sent_at(self.request))
    except InvalidReport as exc:  # NotARetryTarget (R1), skew, conflict (R4), stale (R4a)
        _refuse(names.REPORT_MISSING, str(exc), message)
    return accepted_result(accepted)


@app.task(name=names.REPORT_MISSING_BATCH, bind=True, **DB_RETRY)
def report_missing_batch(self: Any, reports: Any) -> dict[str, Any]:
    """Many reports in one message and one transaction (``client.report_missing_many``).

    Each refused report is kept as a dead letter and listed in the result (the first
    ``SHOWN_REFUSALS``, by index in the batch); a message that is no batch fails.
    """
    task = names.REPORT_MISSING_BATCH
    if not isinstance(reports, list) or not 1 <= len(reports) <= MAX_BATCH:
        _refuse(task, f"a batch is a list of 1..{MAX_BATCH} reports", reports)
    parsed: list[tuple[int, Any, Any]] = []
    refusals: list[dict[str, Any]] = []

    def refuse(index: int, reason: str, message: Any) -> None:
        letter = keep_refused(task, reason, message)  # at most MAX_BATCH of them
        application = message.get("application") if isinstance(message, dict) else None
        refusals.append({"index": index, "application": application, "reason": reason,
                         "dead_letter": letter})  # fmt: skip

    refused = 0
    for index, message in enumerate(reports):
        try:
            parsed.append((index, message, parse_report(message)))
        except InvalidReport as exc:
            refuse(index, str(exc), message)
            refused += 1
    results = service().accept_reports([r for _, _, r in parsed], _sent_at(self.request))
    for (index, message, _), result in zip(parsed, results, strict=True):
        if isinstance(result, InvalidReport):
            refuse(index, str(result), message)
            refused += 1
    refusals.sort(key=lambda r: int(r["index"]))
    return {
        "accepted": len(reports) - refused,
        "refused": refused,
        "refusals": refusals[:SHOWN_REFUSALS],
    }


def _slot_of(task: str, slot: Any, payload: Any) -> Any:
    try:
        return parse_instant(slot)
    except InvalidInstant as exc:
        _refuse(task, str(exc), payload)


def _wait_in_slot(task: Any, at: datetime, why: Exception | str) -> None:
    """Kei-MOTAS or the database could not be read, or another transaction held some of
    the slot's rows: those chains were not decided; try the slot again.

    Raises Celery's ``Retry`` with a bounded back-off until the next grid tick (which
    sends an overdue slot again), then returns. After the close that tick is the next
    business day's opening, so an undecided slot keeps trying instead of waiting for it.
    """
    svc = service()
    now = svc.clock.now()
    next_tick = next_tick_after(svc.deps.calendar, now)
    countdown = retry_countdown(at, now, svc.deps.step, task.request.retries, next_tick)
    if countdown is None:
        log.error("slot %s not decided: %s; the grid tick sends it again", at.isoformat(), why)
        return
    log.warning("slot %s waits %.0f s: %s", at.isoformat(), countdown, why)
    eta = svc.clock.to_real(now + timedelta(seconds=countdown))
    raise task.retry(eta=eta, exc=why if isinstance(why, Exception) else None)


def _run_slot(task: Any, at: Any) -> dict[str, Any]:
    """A slot's counts, and how it decided each application (the first ``slots.SHOWN``),
    so that searching Flower for an application id finds its deciding slot."""
    decided: dict[str, str] = {}
    try:
        counts = service().run_slot(at, decided=decided)
    except UNREADABLE as exc:
        _wait_in_slot(task, at, exc)
        return {"slot": format_instant(at), "unreadable": 1}
    if counts.get("held"):  # rows another transaction held (SKIP LOCKED): not decided yet
        _wait_in_slot(task, at, f"{counts['held']} chain(s) held by another transaction")
    return {
        "slot": format_instant(at),
        **counts,
        "applications": decided,
        "applications_total": sum(counts[k] for k in ("next", "resumed", "auto_corrected")),
    }


# max_retries=None on the task: the tries are bounded by the next grid tick, not by a
# count (Task.retry(max_retries=None) means the task's own, Celery's default 3).
@app.task(name=names.ATTEMPT_SLOT, bind=True, max_retries=None)
def attempt_slot(self: Any, slot: str) -> dict[str, Any]:
    """The attempts of every chain due at ``slot``, decided in batches (DESIGN 2, 3)."""
    return _run_slot(self, _slot_of(names.ATTEMPT_SLOT, slot, {"slot": slot}))


@app.task(name=names.ATTEMPT, bind=True, max_retries=None)
def attempt(self: Any, chain_id: str, attempt_no: int, slot: str) -> dict[str, Any]:
    """One chain's attempt, as older senders send it: its slot decides it (DESIGN 3).

    A duplicate or stale message finds the chain no longer due at ``slot``.
    """
    return _run_slot(self, _slot_of(names.ATTEMPT, slot, [chain_id, attempt_no, slot]))


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
    when = None if at is None else _slot_of(names.CLOSE, at, {"at": at})
    try:
        return service().record_close(when)
    except InvalidInstant as exc:  # R10: not on today's Japan date
        _refuse(names.CLOSE, str(exc), {"at": at})


@app.task(name=names.PURGE_DEAD_LETTERS)
def purge_dead_letters() -> int:
    """Retention: delete dead letters older than DEAD_LETTER_RETENTION_DAYS (beat, daily)."""
    return service().purge_dead_letters(timedelta(days=settings().dead_letter_retention_days))
