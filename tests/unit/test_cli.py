"""``retry-pipeline plan`` and ``retry-pipeline calendar`` through click's CliRunner."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from click.testing import CliRunner, Result

from retry_pipeline.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads RETRY_PIPELINE_* from the process environment: start from defaults.
    for key in list(os.environ):
        if key.startswith("RETRY_PIPELINE_"):
            monkeypatch.delenv(key)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def plan_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run("plan", *args, env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    return data


def test_plan_r9_worked_example() -> None:
    data = plan_json("--detected-at", "2026-11-27T08:36:00+09:00")
    assert data == {
        "detected_at": "2026-11-27T08:36:00+09:00",
        "attempts": [
            "2026-11-27T08:40:00+09:00",
            "2026-11-27T08:50:00+09:00",
            "2026-11-27T09:00:00+09:00",
            "2026-11-27T09:10:00+09:00",
            "2026-11-27T09:20:00+09:00",
            "2026-11-27T09:30:00+09:00",
        ],
        "parked_after": None,
        "auto_correct_at": "2026-11-27T09:30:00+09:00",
    }


def test_plan_r11_worked_example() -> None:
    data = plan_json("--detected-at", "2026-11-27T15:25:00+09:00")
    assert data == {
        "detected_at": "2026-11-27T15:25:00+09:00",
        "attempts": [
            "2026-11-27T15:30:00+09:00",
            "2026-11-27T15:40:00+09:00",
            "2026-11-27T15:50:00+09:00",
            "2026-11-30T08:30:00+09:00",
        ],
        "parked_after": 3,
        "auto_correct_at": "2026-11-30T08:30:00+09:00",
    }


def test_plan_r13_worked_example() -> None:
    data = plan_json("--detected-at", "2026-11-29T10:00:00+09:00")
    assert data["attempts"] == [
        "2026-11-30T08:30:00+09:00",
        "2026-11-30T08:40:00+09:00",
        "2026-11-30T08:50:00+09:00",
        "2026-11-30T09:00:00+09:00",
        "2026-11-30T09:10:00+09:00",
        "2026-11-30T09:20:00+09:00",
    ]
    assert data["parked_after"] is None
    assert data["auto_correct_at"] == "2026-11-30T09:20:00+09:00"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T23:36:00Z",
        "2026-11-26T23:36:00+00:00",
        "2026-11-26T18:36:00-05:00",
        "2026-11-27T05:06:00+05:30",
    ],
)
def test_plan_accepts_any_offset_and_prints_japan_time(text: str) -> None:
    data = plan_json("--detected-at", text)
    assert data["detected_at"] == "2026-11-27T08:36:00+09:00"
    assert data["attempts"][0] == "2026-11-27T08:40:00+09:00"
    assert data["auto_correct_at"] == "2026-11-27T09:30:00+09:00"


@pytest.mark.parametrize("text", ["2026-11-27T08:36:00", "2026-11-27 08:36"])
def test_plan_refuses_input_without_offset(text: str) -> None:
    result = run("plan", "--detected-at", text)
    assert result.exit_code == 2
    assert "no UTC offset" in result.output
    assert "+09:00" in result.output  # tells how to write it
    assert "Traceback" not in result.output


def test_plan_refuses_garbage() -> None:
    result = run("plan", "--detected-at", "yesterday")
    assert result.exit_code == 2
    assert "ISO 8601" in result.output


def test_plan_requires_detected_at() -> None:
    result = run("plan")
    assert result.exit_code == 2
    assert "--detected-at" in result.output


def test_plan_with_close_signal_r10_worked_example() -> None:
    data = plan_json(
        "--detected-at", "2026-11-30T10:05:00+09:00", "--close-signal", "2026-11-30T10:45:00+09:00"
    )
    assert data["attempts"] == [
        "2026-11-30T10:10:00+09:00",
        "2026-11-30T10:20:00+09:00",
        "2026-11-30T10:30:00+09:00",
        "2026-11-30T10:40:00+09:00",
        "2026-12-01T08:30:00+09:00",
    ]
    assert data["parked_after"] == 4
    assert data["auto_correct_at"] == "2026-12-01T08:30:00+09:00"


def test_plan_with_several_close_signals() -> None:
    # R10 Monday closes at 10:25 (given in UTC: 01:25Z); R11 Tuesday closes at 08:00,
    # before its opening, so the parked attempt moves to Wednesday 08:30.
    data = plan_json(
        "--detected-at",
        "2026-11-30T10:05:00+09:00",
        "--close-signal",
        "2026-11-30T01:25:00Z",
        "--close-signal",
        "2026-12-01T08:00:00+09:00",
    )
    assert data["attempts"] == [
        "2026-11-30T10:10:00+09:00",
        "2026-11-30T10:20:00+09:00",
        "2026-12-02T08:30:00+09:00",
    ]
    assert data["parked_after"] == 2


def test_plan_refuses_naive_close_signal() -> None:
    result = run(
        "plan", "--detected-at", "2026-11-30T10:05:00+09:00", "--close-signal", "2026-11-30T10:45"
    )
    assert result.exit_code == 2
    assert "no UTC offset" in result.output


def test_plan_reads_settings_from_environment() -> None:
    data = plan_json(
        "--detected-at", "2026-11-27T11:25:00+09:00", env={"RETRY_PIPELINE_CLOSE": "12:00"}
    )
    assert data["attempts"] == [
        "2026-11-27T11:30:00+09:00",
        "2026-11-27T11:40:00+09:00",
        "2026-11-27T11:50:00+09:00",
        "2026-11-30T08:30:00+09:00",
    ]
    assert data["parked_after"] == 3


def test_bad_environment_is_a_usage_error() -> None:
    result = run(
        "plan",
        "--detected-at",
        "2026-11-27T08:36:00+09:00",
        env={"RETRY_PIPELINE_STEP_MIN": "7"},
    )
    assert result.exit_code == 2
    assert "STEP_MIN" in result.output


CALENDAR_2026_12_25 = [
    ("2026-12-25", "Fri", None),
    ("2026-12-26", "Sat", "weekend"),
    ("2026-12-27", "Sun", "weekend"),
    ("2026-12-28", "Mon", None),
    ("2026-12-29", "Tue", "year-end closure"),
    ("2026-12-30", "Wed", "year-end closure"),
    ("2026-12-31", "Thu", "year-end closure"),
    ("2027-01-01", "Fri", "national holiday: New Year's Day"),
    ("2027-01-02", "Sat", "weekend"),
    ("2027-01-03", "Sun", "weekend"),
    ("2027-01-04", "Mon", None),
    ("2027-01-05", "Tue", None),
]


def test_calendar_text() -> None:
    result = run("calendar", "--from", "2026-12-25", "--days", "12")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 12
    for line, (day, weekday, reason) in zip(lines, CALENDAR_2026_12_25, strict=True):
        assert line.startswith(f"{day} {weekday}")
        if reason is None:
            assert line.endswith("business day")
            assert "closed" not in line
        else:
            assert f"closed ({reason})" in line


def test_calendar_json() -> None:
    result = run("calendar", "--from", "2026-12-25", "--days", "12", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert rows == [
        {"date": day, "weekday": weekday, "business_day": reason is None, "reason": reason}
        for day, weekday, reason in CALENDAR_2026_12_25
    ]


def test_calendar_golden_week_2026_json() -> None:
    result = run("calendar", "--from", "2026-05-01", "--days", "7", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [(r["date"], r["business_day"]) for r in rows] == [
        ("2026-05-01", True),
        ("2026-05-02", False),
        ("2026-05-03", False),
        ("2026-05-04", False),
        ("2026-05-05", False),
        ("2026-05-06", False),  # substitute holiday
        ("2026-05-07", True),
    ]
    assert rows[5]["reason"].startswith("national holiday")


def test_calendar_configured_closure() -> None:
    result = run(
        "calendar",
        "--from",
        "2026-11-27",
        "--days",
        "1",
        "--json",
        env={"RETRY_PIPELINE_EXTRA_CLOSURES": "2026-11-27"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "date": "2026-11-27",
        "weekday": "Fri",
        "business_day": False,
        "reason": "configured closure",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["calendar", "--from", "2026/12/25", "--days", "3"],
        ["calendar", "--from", "2026-12-25", "--days", "0"],
        ["calendar", "--from", "2026-12-25"],
    ],
)
def test_calendar_bad_arguments(args: list[str]) -> None:
    assert run(*args).exit_code == 2
