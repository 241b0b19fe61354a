"""R15: what an office sees of its applications in retry (and R14's portal status)."""

from __future__ import annotations

from typing import Any

from retry_pipeline.calendar import BusinessCalendar, format_instant, to_local
from retry_pipeline.model import PORTAL_STATUS_UNDER_REVIEW, Chain, HistoryEntry, Phase
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
    """ "08:40" style text for staff: the next slot, or where a parked chain waits."""
    slot = to_local(chain.cursor.slot)
    if chain.cursor.phase is Phase.NEXT_DAY:
        return f"parked until {slot.format('HH:mm')} {slot.date().isoformat()}"
    if chain.cursor.phase is Phase.FRESH:
        return f"waiting for the opening {slot.format('HH:mm')} {slot.date().isoformat()}"
    return f"{slot.format('HH:mm')} {slot.date().isoformat()}"


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


def render_office_view(view: dict[str, Any]) -> str:
    """Plain text for office staff."""
    lines = [f"Office {view['office']}: {len(view['applications'])} application(s) in retry"]
    for a in view["applications"]:
        lines.append(
            f"- {a['application']} ({a['procedure']}, vehicle {a['vehicle']}): missing "
            f"{', '.join(a['missing'])}; attempts made {a['attempts_made']}; next attempt "
            f"{a['next_attempt_text']}; portal shows {a['portal_status']}"
        )
        for h in a["history"]:
            lines.append(f"    {h['recorded_at'][:16]} {h['event']:<14} {h['detail']}")
    for e in view["ended"]:
        lines.append(f"- {e['application']}: retry ended ({e['outcome']})")
        for h in e["history"]:
            lines.append(f"    {h['recorded_at'][:16]} {h['event']:<14} {h['detail']}")
    return "\n".join(lines)
