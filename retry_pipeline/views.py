"""R15: what an office sees of its applications in retry (and R14's portal status)."""

from __future__ import annotations

from typing import Any

from retry_pipeline import wording
from retry_pipeline.calendar import BusinessCalendar, format_instant, parse_instant
from retry_pipeline.model import PORTAL_STATUS_UNDER_REVIEW, Chain, HistoryEntry
from retry_pipeline.ports import Store


def _history(entries: list[HistoryEntry]) -> list[dict[str, Any]]:
    return [
        {
            "event": h.event,
            "attempt": h.attempt_no,
            "slot": format_instant(h.slot) if h.slot else None,
            "missing": list(h.missing),
            "detail": h.detail,
            "recorded_at": format_instant(h.recorded_at),
        }
        for h in entries
    ]


def next_attempt_text(chain: Chain, calendar: BusinessCalendar) -> str:
    """ "次回確認 09:40" style text for staff, or where a parked chain waits (UI-WORDING)."""
    return wording.next_check_text(chain.cursor.phase.value, chain.cursor.slot)


def office_view(
    store: Store, calendar: BusinessCalendar, office: str, application: str | None = None
) -> dict[str, Any]:
    """The office's live chains (one application with ``application``), with history.

    An application of another office is never shown (R15): it reads as "no record".
    """
    with store.unit() as u:
        chains = u.chains.of_office(office, application)
        history = u.history.lines(application=application, office=office)
    by_chain: dict[str, list[HistoryEntry]] = {}
    for h in history:
        by_chain.setdefault(h.chain_id, []).append(h)
    live = []
    for c in chains:
        live.append(
            {
                "application": c.subject.application,
                "procedure": c.subject.procedure.value,
                "vehicle": c.subject.vehicle,
                "missing": sorted(k.value for k in c.missing),
                "attempts_made": c.attempts_made,
                "next_attempt": format_instant(c.cursor.slot),
                "next_attempt_text": next_attempt_text(c, calendar),
                "parked": c.cursor.parked,
                "detected_at": format_instant(c.detected_at),
                "portal_status": PORTAL_STATUS_UNDER_REVIEW,  # R14
                "history": _history(by_chain.get(c.chain_id, [])),
            }
        )
    ended = []
    if application is not None:
        live_ids = {c.chain_id for c in chains}
        for chain_id, entries in by_chain.items():
            if chain_id not in live_ids:
                ended.append(
                    {
                        "application": application,
                        "chain_id": chain_id,
                        "outcome": entries[-1].event,
                        "history": _history(entries),
                    }
                )
    return {"office": office, "applications": live, "ended": ended}


def render_office_view(view: dict[str, Any], attempts_allowed: int = 6) -> str:
    """Plain Japanese text for office staff (the console's words; no rule numbers)."""
    live = view["applications"]
    lines = [f"事務所 {view['office']}：{wording.IN_RETRY} {len(live)} 件"]
    for a in live:
        lines.append(
            f"- {a['application']}（車台番号 {a['vehicle']}）"
            f"{wording.kinds_text(a['missing'])} が{wording.NOT_LINKED}；"
            f"{wording.attempts_text(a['attempts_made'], attempts_allowed)}；"
            f"{a['next_attempt_text']}；"
            f"申請者画面の表示「{a['portal_status']}」；"
            f"{wording.DETECTED_AT} {wording.datetime_text(parse_instant(a['detected_at']))}"
        )
        lines.extend(_history_lines(a["history"]))
    for e in view["ended"]:
        last = e["history"][-1] if e["history"] else {"detail": ""}
        ending = wording.outcome_text(e["outcome"], last["detail"])
        lines.append(f"- {e['application']}：リトライ終了（{ending}）")
        lines.extend(_history_lines(e["history"]))
    return "\n".join(lines)


def _history_lines(history: list[dict[str, Any]]) -> list[str]:
    out = []
    for h in history:
        at = wording.datetime_text(parse_instant(h["recorded_at"]))
        text = wording.event_text(h["event"], h["attempt"], h["missing"], h["detail"])
        out.append(f"    {at} {text}")
    return out
