"""The demo's table: auto-corrections today (no retry) against the retry, from a simulation.

Pure: a function of the scenario and the report ``simulate`` returned for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from statistics import median
from typing import Any

from retry_pipeline.calendar import BusinessCalendar, parse_instant, to_local
from retry_pipeline.config import Settings
from simulation.scenario import Scenario

NEXT_DAY = "next-day 08:30"  # R11: the one attempt of a chain parked at the close
COLUMNS = ("1", "2", "3", "4", "5", "6", NEXT_DAY)


@dataclass(frozen=True)
class Span:
    """Minutes from detection to decision over some decisions."""

    count: int = 0
    median_min: float = 0.0
    max_min: float = 0.0


@dataclass(frozen=True)
class DemoSummary:
    """Counts behind the table."""

    day: date  # most applications were detected on
    applications: int  # reported a missing certificate
    undecided: int  # no outcome received (refused, or still open)
    resumed: dict[str, int] = field(default_factory=dict)  # by attempt: "1".."6", NEXT_DAY
    auto_corrected: dict[str, int] = field(default_factory=dict)  # as resumed, "0": at once
    parked: int = 0  # parked at the close, decided at the next business day's 08:30
    release_day: date | None = None
    same_day: Span = Span()  # decided on the day of detection
    over_night: Span = Span()  # decided on a later day

    @property
    def resumed_total(self) -> int:
        return sum(self.resumed.values())

    @property
    def auto_corrected_total(self) -> int:
        return sum(self.auto_corrected.values())


def summarize(scenario: Scenario, report: Mapping[str, Any]) -> DemoSummary:
    """Count the outcomes of ``report`` by attempt, and time them from their detection."""
    calendar = BusinessCalendar(Settings())
    signals = list(scenario.close_signals)
    detected: dict[str, datetime] = {}
    for message in scenario.report_messages():
        first = detected.get(message.application)
        detected[message.application] = min(message.detected_at, first or message.detected_at)
    resumed: dict[str, int] = {}
    corrected: dict[str, int] = {}
    minutes: dict[bool, list[float]] = {False: [], True: []}
    parked = 0
    release_days: set[date] = set()
    decided: set[str] = set()
    for entry in report.get("applications", []):
        app, at = entry["application"], detected.get(entry["application"])
        if at is None:
            continue  # not in the scenario: not ours to count
        decided.add(app)
        decided_at = parse_instant(entry["decided_at"])
        later_day = to_local(decided_at).date() > to_local(at).date()
        # R10/R12: detected in review hours and decided on a later day = parked at the close
        # (R13, detected off-hours, starts fresh: counted by its attempts).
        was_parked = later_day and calendar.in_review_hours(at, signals)
        column = NEXT_DAY if was_parked else str(len(entry["attempts"]))
        counts = resumed if entry["outcome"] == "resumed" else corrected
        counts[column] = counts.get(column, 0) + 1
        if was_parked:
            parked += 1
            release_days.add(to_local(decided_at).date())
        minutes[later_day].append((decided_at.timestamp() - at.timestamp()) / 60)
    return DemoSummary(
        day=_busiest_day(detected.values()),
        applications=len(detected),
        undecided=len(set(detected) - decided),
        resumed=resumed,
        auto_corrected=corrected,
        parked=parked,
        release_day=min(release_days, default=None),
        same_day=_span(minutes[False]),
        over_night=_span(minutes[True]),
    )


def _busiest_day(instants: Iterable[datetime]) -> date:
    """The day most applications were detected on (the earliest of a tie)."""
    days = Counter(to_local(t).date() for t in instants)
    return min(days, key=lambda d: (-days[d], d))


def _span(values: list[float]) -> Span:
    if not values:
        return Span()
    return Span(len(values), float(median(values)), max(values))


def demo_table(scenario: Scenario, report: Mapping[str, Any]) -> str:
    """The demo's table as text."""
    return render_summary(summarize(scenario, report))


def render_summary(s: DemoSummary) -> str:
    """The table of ``summarize``'s counts."""
    n, corrected = s.applications, s.auto_corrected_total
    avoided = n - corrected - s.undecided
    at_once, next_day = s.auto_corrected.get("0", 0), s.auto_corrected.get(NEXT_DAY, 0)
    lines = [
        f"Post-holiday morning, {s.day:%a %Y-%m-%d}: {n} applications found a certificate",
        "missing at pre-review (前審査); today each one is auto-corrected (自動補正) at once.",
        "",
        f"{'':44}{'without retry':>15}{'with retry':>13}",
        _row("auto-corrected (returned to the applicant)", n, corrected),
        _row("  at once, at detection (R1/R3)", n, at_once),
        _row("  after the last attempt, same day (R8)", "-", corrected - at_once - next_day),
        _row("  at the one 08:30 attempt next day (R11)", "-", next_day),
        _row("resumed (pre-review runs again)", 0, s.resumed_total),
        _row("parked at close, released next day 08:30", "-", s.parked),
        _row("minutes detection→decision, median*", 0, _minutes(s.same_day.median_min)),
        _row("minutes detection→decision, max*", 0, _minutes(s.same_day.max_min)),
    ]
    if s.undecided:
        lines.append(_row("no outcome (refused or unfinished)", 0, s.undecided))
    lines += [
        "",
        "* decisions taken on the day of detection",
        f"auto-corrections avoided by the retry: {avoided} of {n} ({_percent(avoided, n)})",
        "",
        "decided at attempt " + "".join(f"{c:>5}" for c in COLUMNS[:-1]) + f"{COLUMNS[-1]:>16}",
        _attempt_row("  resumed", s.resumed),
        _attempt_row("  auto-corrected", s.auto_corrected),
    ]
    if s.parked:
        released = s.resumed.get(NEXT_DAY, 0)
        day = f" {s.release_day:%a %Y-%m-%d}" if s.release_day else ""
        lines += [
            "",
            f"parked at the OSS close: {s.parked}; one attempt at 08:30{day} (R11):",
            f"  {released} resumed, {s.auto_corrected.get(NEXT_DAY, 0)} auto-corrected, "
            f"{_minutes(s.over_night.median_min)} min median from detection (over the night)",
        ]
    return "\n".join(lines) + "\n"


def _row(label: str, today: int | str, retry: int | str) -> str:
    return f"{label:<44}{today!s:>15}{retry!s:>13}"


def _attempt_row(label: str, counts: Mapping[str, int]) -> str:
    cells = "".join(f"{counts.get(c, 0):>5}" for c in COLUMNS[:-1])
    return f"{label:<18}{cells}{counts.get(COLUMNS[-1], 0):>16}"


def _minutes(value: float) -> str:
    return f"{value:.0f}"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"
