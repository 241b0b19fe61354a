"""The demo's table from a small hand-made scenario and report (literal counts)."""

from __future__ import annotations

from datetime import date
from typing import Any

from simulation.demo import NEXT_DAY, Span, demo_table, summarize
from simulation.scenario import Scenario


def report_(app: str, detected: str, procedure: str = "continuous") -> dict[str, Any]:
    body: dict[str, Any] = {
        "application": app,
        "office": "TK-NERIMA",
        "procedure": procedure,
        "vehicle": f"V-{app}",
        "missing": ["safety"] if procedure == "continuous" else ["completion"],
        "detected_at": detected,
    }
    if procedure == "new":
        body |= {"insurer_id": "TM01", "insurance_no": "123"}
    return body


def entry(app: str, outcome: str, attempts: list[str], decided: str) -> dict[str, Any]:
    return {
        "application": app,
        "outcome": outcome,
        "attempts": [f"2026-05-{a}:00+09:00" for a in attempts],
        "decided_at": f"2026-05-{decided}:00+09:00",
        "missing": [] if outcome == "resumed" else ["safety"],
    }


SCENARIO = Scenario.model_validate(
    {
        "reports": [
            report_("A1", "2026-05-07T08:36:00+09:00"),
            report_("A2", "2026-05-07T08:45:30+09:00"),
            report_("A3", "2026-05-07T09:05:00+09:00"),
            report_("A4", "2026-05-07T15:35:00+09:00"),
            report_("A5", "2026-05-07T15:55:00+09:00"),  # R12
            report_("A6", "2026-05-07T09:00:00+09:00", "new"),  # R1: not in force
            report_("A7", "2026-05-07T10:00:00+09:00"),  # refused: no outcome
            report_("A8", "2026-05-03T10:00:00+09:00"),  # R13: a holiday, starts fresh
            report_("A1", "2026-05-07T08:38:00+09:00"),  # R4: second report, same chain
        ]
    }
)
SIX = ["07T09:10", "07T09:20", "07T09:30", "07T09:40", "07T09:50", "07T10:00"]
REPORT = {
    "applications": [
        entry("A1", "resumed", ["07T08:40", "07T08:50"], "07T08:50"),
        entry("A2", "resumed", ["07T08:50"], "07T08:50"),
        entry("A3", "auto_corrected", SIX, "07T10:00"),
        entry("A4", "resumed", ["07T15:40", "07T15:50", "08T08:30"], "08T08:30"),
        entry("A5", "auto_corrected", ["08T08:30"], "08T08:30"),
        {**entry("A6", "auto_corrected", [], "07T09:00"), "missing": ["completion"]},
        entry("A8", "resumed", ["07T08:30", "07T08:40", "07T08:50"], "07T08:50"),
        entry("ZZ", "resumed", ["07T08:40"], "07T08:40"),  # not in the scenario: ignored
    ],
    "refused": [{"task": "retry_pipeline.report_missing", "reason": "R1"}],
}


def test_summary_counts() -> None:
    s = summarize(SCENARIO, REPORT)
    assert s.day == date(2026, 5, 7)
    assert (s.applications, s.undecided) == (8, 1)
    assert s.resumed == {"2": 1, "1": 1, NEXT_DAY: 1, "3": 1}
    assert s.auto_corrected == {"6": 1, NEXT_DAY: 1, "0": 1}
    assert (s.resumed_total, s.auto_corrected_total) == (4, 3)
    assert (s.parked, s.release_day) == (2, date(2026, 5, 8))
    # Same day: A1 14 (first report 08:36), A2 4.5, A3 55, A6 0.
    assert s.same_day == Span(4, 9.25, 55.0)
    # Later day: A4 1015, A5 995, A8 (R13) 3 days and 1370 min.
    assert s.over_night == Span(3, 1015.0, 3 * 1440 + 1370.0)


def test_table_text() -> None:
    lines = demo_table(SCENARIO, REPORT).splitlines()
    assert lines[0] == "Post-holiday morning, Thu 2026-05-07: 8 applications found a certificate"
    body = {line[:44].rstrip(): line[44:].split() for line in lines[4:13]}
    assert body == {
        "auto-corrected (returned to the applicant)": ["8", "3"],
        "  at once, at detection (R1/R3)": ["8", "1"],
        "  after the last attempt, same day (R8)": ["-", "1"],
        "  at the one 08:30 attempt next day (R11)": ["-", "1"],
        "resumed (pre-review runs again)": ["0", "4"],
        "parked at close, released next day 08:30": ["-", "2"],
        "minutes detection→decision, median*": ["0", "9"],
        "minutes detection→decision, max*": ["0", "55"],
        "no outcome (refused or unfinished)": ["0", "1"],
    }
    assert "auto-corrections avoided by the retry: 4 of 8 (50 %)" in lines
    assert "  resumed             1    1    1    0    0    0               1" in lines
    assert "  auto-corrected      0    0    0    0    0    1               1" in lines
    assert "parked at the OSS close: 2; one attempt at 08:30 Fri 2026-05-08 (R11):" in lines
    assert "  1 resumed, 1 auto-corrected, 1015 min median from detection (over the night)" in (
        lines
    )
