"""What the console reads from the pipeline's tables, always through a ``Scope``.

Read-only queries over the ORM rows (the retry table, its history, the outbox, dead
letters); each one restricts offices with ``Scope.clause`` so that another office's
application is exactly as absent as an unknown one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from retry_pipeline import names, wording
from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow, OutboxRow
from retry_pipeline.calendar import format_instant, to_local
from retry_pipeline.config import Settings
from retry_pipeline.model import PORTAL_STATUS_UNDER_REVIEW
from retry_pipeline.web.scope import Scope

ENDINGS = ("resumed", "auto_corrected")
REPLAYABLE_TASKS = (names.REPORT_MISSING, names.REPORT_MISSING_BATCH)


def day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """Start and end of ``now``'s Japan-time day."""
    start = to_local(now).start_of("day")
    return start, start + timedelta(days=1)


def live_item(row: ChainRow, settings: Settings, now: datetime) -> dict[str, Any]:
    """One live application, as the office page and the API show it."""
    missing = [k for k in wording.KIND_ORDER if k in row.missing]
    parked = row.phase == "next_day"
    allowed = settings.attempts_per_chain
    return {
        "application": row.application,
        "office": row.office,
        "vehicle": row.vehicle,
        "missing": missing,
        "missing_text": wording.kinds_text(missing),
        "attempts_made": row.attempts_made,
        "attempts_allowed": allowed,
        "attempts_text": wording.attempts_text(row.attempts_made, allowed),
        "parked": parked,
        "status_text": "受付終了のため停止中" if parked else wording.IN_RETRY,
        "next_check_at": format_instant(row.next_slot),
        "next_check_text": wording.next_check_text(row.phase, row.next_slot, now),
        "portal_status": PORTAL_STATUS_UNDER_REVIEW,
        "detected_at": format_instant(row.detected_at),
        "detected_at_text": wording.datetime_text(row.detected_at),
    }


def live_applications(
    session: Session,
    scope: Scope,
    settings: Settings,
    now: datetime,
    *,
    parked: bool | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """The scope's applications in retry, oldest detection first; optional filters."""
    stmt = select(ChainRow).where(scope.clause(ChainRow.office))
    if parked is not None:
        stmt = stmt.where((ChainRow.phase == "next_day") == parked)
    stmt = stmt.order_by(ChainRow.detected_at, ChainRow.application)
    items = [live_item(r, settings, now) for r in session.scalars(stmt)]
    if kind is not None:
        items = [i for i in items if kind in i["missing"]]
    return items


def ending_item(row: HistoryRow) -> dict[str, Any]:
    """One decision (an ending in the history)."""
    at = row.slot or row.recorded_at
    return {
        "application": row.application,
        "office": row.office,
        "outcome": row.event,
        "outcome_short": wording.OUTCOME_SHORT.get(row.event, row.event),
        "outcome_text": wording.outcome_text(row.event, row.detail),
        "missing": list(row.missing),
        "missing_text": wording.kinds_text(list(row.missing)),
        "decided_at": format_instant(at),
        "decided_at_text": wording.time_text(at),
    }


def decided_today(session: Session, scope: Scope, now: datetime) -> list[dict[str, Any]]:
    """Applications whose retry ended today (Japan time), newest first."""
    start, end = day_bounds(now)
    stmt = (
        select(HistoryRow)
        .where(
            scope.clause(HistoryRow.office),
            HistoryRow.event.in_(ENDINGS),
            HistoryRow.slot >= start,
            HistoryRow.slot < end,
        )
        .order_by(HistoryRow.slot.desc(), HistoryRow.id.desc())
    )
    return [ending_item(r) for r in session.scalars(stmt)]


def totals(live: list[dict[str, Any]], decided: list[dict[str, Any]]) -> dict[str, int]:
    """The counts at the top of the office page."""
    counts = {
        "live": len(live),
        "parked": sum(1 for i in live if i["parked"]),
        "resumed_today": sum(1 for d in decided if d["outcome"] == "resumed"),
        "auto_corrected_today": sum(1 for d in decided if d["outcome"] == "auto_corrected"),
    }
    for kind in wording.KIND_ORDER:
        counts[f"missing_{kind}"] = sum(1 for i in live if kind in i["missing"])
    return counts


def application_detail(
    session: Session, scope: Scope, application: str, settings: Settings, now: datetime
) -> dict[str, Any] | None:
    """One application with its whole history; None when unknown *or* outside the scope."""
    row = session.scalars(
        select(ChainRow).where(ChainRow.application == application, scope.clause(ChainRow.office))
    ).first()
    history = list(
        session.scalars(
            select(HistoryRow)
            .where(HistoryRow.application == application, scope.clause(HistoryRow.office))
            .order_by(HistoryRow.id)
        )
    )
    if row is None and not history:
        return None
    timeline = [
        {
            "event": h.event,
            "text": wording.event_text(h.event, h.attempt_no, list(h.missing), h.detail),
            "attempt": h.attempt_no,
            "missing": list(h.missing),
            "at": format_instant(h.recorded_at),
            "at_text": wording.datetime_text(h.recorded_at),
            "slot": format_instant(h.slot) if h.slot else None,
        }
        for h in history
    ]
    endings = [ending_item(h) for h in history if h.event in ENDINGS]
    return {
        "application": application,
        "office": row.office if row is not None else history[-1].office,
        "live": live_item(row, settings, now) if row is not None else None,
        "last_outcome": endings[-1] if endings and row is None else None,
        "timeline": timeline,
    }


def dead_letters(session: Session, *, resolved: bool = False, limit: int = 200) -> list[Any]:
    """Refused messages (operator), newest first: unresolved ones, or resolved ones."""
    cond = (
        DeadLetterRow.resolved_at.isnot(None) if resolved else DeadLetterRow.resolved_at.is_(None)
    )
    stmt = select(DeadLetterRow).where(cond).order_by(DeadLetterRow.id.desc()).limit(limit)
    return [
        {
            "id": r.id,
            "task": r.task,
            "reason": r.reason,
            "payload": r.payload,
            "received_at": format_instant(r.received_at),
            "received_at_text": wording.datetime_text(r.received_at),
            "replayable": r.task in REPLAYABLE_TASKS,
            "replay_result": r.replay_result,
            "replayed_at_text": wording.datetime_text(r.replayed_at) if r.replayed_at else None,
            "resolved_by": r.resolved_by,
            "resolved_at_text": wording.datetime_text(r.resolved_at) if r.resolved_at else None,
        }
        for r in session.scalars(stmt)
    ]


def unconfirmed_outcomes(session: Session, scope: Scope, limit: int = 200) -> list[Any]:
    """Outcomes the examination side has not confirmed yet (operator), oldest first."""
    stmt = (
        select(OutboxRow)
        .where(OutboxRow.confirmed_at.is_(None), scope.clause(OutboxRow.office))
        .order_by(OutboxRow.id)
        .limit(limit)
    )
    return [
        {
            "id": r.id,
            "application": r.application,
            "office": r.office,
            "outcome": r.outcome,
            "outcome_short": wording.OUTCOME_SHORT.get(r.outcome, r.outcome),
            "idempotency_key": r.idempotency_key,
            "decided_at_text": wording.datetime_text(r.decided_at),
            "sent_at_text": wording.datetime_text(r.sent_at) if r.sent_at else "未送信",
            "send_count": r.send_count,
        }
        for r in session.scalars(stmt)
    ]


def offices(session: Session) -> list[str]:
    """Every office with a live or recorded application (the operator's selector)."""
    live = set(session.scalars(select(ChainRow.office).distinct()))
    seen = set(session.scalars(select(HistoryRow.office).distinct()))
    return sorted(live | seen)
