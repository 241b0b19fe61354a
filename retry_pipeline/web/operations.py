"""Operator actions: replay a dead letter through the normal intake, resolve it, resend."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from retry_pipeline.adapters.orm import DeadLetterRow, OutboxRow
from retry_pipeline.adapters.outbox import pending_outcome
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.errors import InvalidReport
from retry_pipeline.messages import parse_report
from retry_pipeline.service.outcomes import record_sent
from retry_pipeline.service.pipeline import Pipeline
from retry_pipeline.web.queries import REPLAYABLE_TASKS

log = logging.getLogger(__name__)


def _sql(service: Pipeline) -> RetryStore:
    """The console reads and marks dead letters and outbox rows in SQL directly."""
    store = service.store
    assert isinstance(store, RetryStore), store
    return store


@dataclass(frozen=True)
class ActionResult:
    """What an operator action did, in words for the page."""

    ok: bool
    message: str


def replay_dead_letter(service: Pipeline, letter_id: int, username: str) -> ActionResult:
    """Send a refused report again through ``accept_report``; record what became of it.

    Accepted: the letter is resolved (by ``username``, replayed). Refused again: the
    new reason is recorded and the letter stays open.
    """
    with _sql(service).unit() as u:
        row = u.session.get(DeadLetterRow, letter_id)
        if row is None or row.resolved_at is not None:
            return ActionResult(False, "対象のメッセージが見つからないか、処理済みです")
        task, payload = row.task, row.payload
    if task not in REPLAYABLE_TASKS:
        return ActionResult(False, "このメッセージは再投入できません（解決済みにできます）")
    try:
        report = parse_report(payload)
        accepted = service.accept_report(report)
    except InvalidReport as exc:
        result, ok = f"再投入不可: {exc}", False
    else:
        kind = "リトライ対象" if accepted.retry else "自動補正"
        result, ok = f"再投入済み: {kind}（{accepted.reason}）", True
        log.info(
            "dead letter %d replayed: %s",
            letter_id,
            accepted.reason,
            extra={"application": report.subject.application, "chain_id": accepted.chain_id},
        )
    now = service.clock.now()
    with _sql(service).unit() as u:
        row = u.session.get(DeadLetterRow, letter_id)
        assert row is not None
        row.replayed_at = now
        row.replay_result = result[:500]
        if ok and row.resolved_at is None:
            row.resolved_at = now
            row.resolved_by = f"{username} (replay)"[:64]
    return ActionResult(ok, result)


def resolve_dead_letter(service: Pipeline, letter_id: int, username: str) -> ActionResult:
    """Mark a refused message as dealt with (it stays in the table)."""
    with _sql(service).unit() as u:
        row = u.session.get(DeadLetterRow, letter_id)
        if row is None or row.resolved_at is not None:
            return ActionResult(False, "対象のメッセージが見つからないか、処理済みです")
        row.resolved_at = service.clock.now()
        row.resolved_by = username[:64]
    log.info("dead letter %d resolved by %s", letter_id, username)
    return ActionResult(True, f"メッセージ {letter_id} を解決済みにしました")


def resend_outcome(service: Pipeline, outbox_id: int) -> ActionResult:
    """Hand an unconfirmed outcome to the examination side again (as the relay does)."""
    with _sql(service).unit() as u:
        row = u.session.scalars(
            select(OutboxRow).where(OutboxRow.id == outbox_id, OutboxRow.confirmed_at.is_(None))
        ).first()
        if row is None:
            return ActionResult(False, "対象の結果が見つからないか、確認済みです")
        outcome = pending_outcome(row)
    extra = {"application": outcome.application, "chain_id": outcome.chain_id}
    try:
        service.deps.gateway.deliver([outcome])
    except Exception:
        log.exception("could not resend %s", outcome.idempotency_key, extra=extra)
        return ActionResult(False, "送信できませんでした（後ほど自動で再送されます）")
    with _sql(service).unit() as u:
        record_sent(service.deps, u, [outcome], service.clock.now())
    log.info("outcome %s resent by an operator", outcome.idempotency_key, extra=extra)
    return ActionResult(True, f"{outcome.application} の結果を再送しました")
