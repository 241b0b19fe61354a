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


CALENDAR_2026_12_25 = [  # (date, weekday, English reason, Japanese reason)
    ("2026-12-25", "Fri", None, None),
    ("2026-12-26", "Sat", "weekend", "週末"),
    ("2026-12-27", "Sun", "weekend", "週末"),
    ("2026-12-28", "Mon", None, None),
    ("2026-12-29", "Tue", "year-end closure", "年末年始の閉庁"),
    ("2026-12-30", "Wed", "year-end closure", "年末年始の閉庁"),
    ("2026-12-31", "Thu", "year-end closure", "年末年始の閉庁"),
    ("2027-01-01", "Fri", "national holiday: New Year's Day", "祝日: 元日"),
    ("2027-01-02", "Sat", "weekend", "週末"),
    ("2027-01-03", "Sun", "weekend", "週末"),
    ("2027-01-04", "Mon", None, None),
    ("2027-01-05", "Tue", None, None),
]


@pytest.mark.parametrize(
    ("lang", "column"), [([], 3), (["--lang", "ja"], 3), (["--lang", "en"], 2)]
)
def test_calendar_text(lang: list[str], column: int) -> None:
    result = run("calendar", "--from", "2026-12-25", "--days", "12", *lang)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 12
    for line, row in zip(lines, CALENDAR_2026_12_25, strict=True):
        day, weekday, reason = row[0], row[1], row[column]
        if reason is None:
            assert line == f"{day} {weekday}  business day"
        else:
            assert line == f"{day} {weekday}  closed ({reason})"


@pytest.mark.parametrize(("lang", "column"), [([], 3), (["--lang", "en"], 2)])
def test_calendar_json(lang: list[str], column: int) -> None:
    result = run("calendar", "--from", "2026-12-25", "--days", "12", "--json", *lang)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert rows == [
        {"date": r[0], "weekday": r[1], "business_day": r[2] is None, "reason": r[column]}
        for r in CALENDAR_2026_12_25
    ]


def test_calendar_golden_week_2026_json() -> None:
    result = run("calendar", "--from", "2026-05-01", "--days", "7", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [(r["date"], r["business_day"], r["reason"]) for r in rows] == [
        ("2026-05-01", True, None),
        ("2026-05-02", False, "週末"),
        ("2026-05-03", False, "週末"),
        ("2026-05-04", False, "祝日: みどりの日"),
        ("2026-05-05", False, "祝日: こどもの日"),
        ("2026-05-06", False, "祝日: 振替休日"),  # substitute holiday
        ("2026-05-07", True, None),
    ]


def test_calendar_citizens_holiday_in_both_languages() -> None:
    # 2026-09-22: a weekday between two national holidays (国民の休日).
    ja = run("calendar", "--from", "2026-09-22", "--days", "1", "--json")
    en = run("calendar", "--from", "2026-09-22", "--days", "1", "--json", "--lang", "en")
    assert json.loads(ja.stdout)["reason"] == "祝日: 国民の休日"
    assert json.loads(en.stdout)["reason"] == "national holiday: National Holiday"


@pytest.mark.parametrize(
    ("lang", "reason"), [([], "設定された閉庁日"), (["--lang", "en"], "configured closure")]
)
def test_calendar_configured_closure(lang: list[str], reason: str) -> None:
    result = run(
        "calendar",
        "--from",
        "2026-11-27",
        "--days",
        "1",
        "--json",
        *lang,
        env={"RETRY_PIPELINE_EXTRA_CLOSURES": "2026-11-27"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "date": "2026-11-27",
        "weekday": "Fri",
        "business_day": False,
        "reason": reason,
    }


@pytest.mark.parametrize(
    "args",
    [
        ["calendar", "--from", "2026/12/25", "--days", "3"],
        ["calendar", "--from", "2026-12-25", "--days", "0"],
        ["calendar", "--from", "2026-12-25"],
        ["calendar", "--from", "2026-12-25", "--days", "3", "--lang", "fr"],
        ["calendar", "--from", "2100-01-01", "--days", "3"],
        ["calendar", "--from", "1948-12-31", "--days", "3"],
        ["calendar", "--from", "2099-12-30", "--days", "3"],  # runs into 2100
        ["calendar", "--from", "9999-12-31", "--days", "3"],  # past year 9999
    ],
)
def test_calendar_bad_arguments(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # nothing printed before the refusal
    assert [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in result.output


# -- bad instants: every instant the calendar cannot handle exits 2 with one line ------


def error_lines(result: Result) -> list[str]:
    """The output of a refusal: one ``Error:`` line and nothing else (no usage block)."""
    lines = result.output.splitlines()
    assert all(line.startswith("Error:") for line in lines), result.output
    return lines


@pytest.mark.parametrize(
    "text",
    [
        "9999-12-31T23:59:00+09:00",
        "0001-01-01T00:00:00+09:00",
        "9999-12-31T23:59:00Z",
        "0001-01-01T00:00:00Z",
        "2100-01-01T00:00:00+09:00",
        "1948-12-31T23:59:00+09:00",
        "1948-12-31T14:59:59Z",  # 1948-12-31 23:59:59 in Japan
    ],
)
def test_plan_refuses_instants_outside_the_calendar(text: str) -> None:
    result = run("plan", "--detected-at", text)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert error_lines(result) == [
        f"Error: Invalid value for '--detected-at': {text!r} is outside the calendar "
        "(1949-01-01..2099-12-31 Japan time)"
    ]


def test_plan_refuses_a_close_signal_outside_the_calendar() -> None:
    result = run(
        "plan", "--detected-at", "2026-11-30T10:05:00+09:00", "--close-signal", "9999-12-31T23:59Z"
    )
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1
    assert "--close-signal" in error_lines(result)[0]


def test_plan_whose_attempts_run_past_the_calendar_exits_2() -> None:
    # Detected on the last day the calendar knows: the next opening is in 2100.
    result = run("plan", "--detected-at", "2099-12-31T10:00:00+09:00")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.output.strip().splitlines() == [
        "Error: 2100-01-01 is outside the calendar (1949-01-01..2099-12-31 Japan time: "
        "the years whose national holidays are known)"
    ]


def test_plan_first_and_last_instants_of_the_calendar() -> None:
    first = plan_json("--detected-at", "1948-12-31T15:00:00Z")  # 1949-01-01 00:00 JST
    assert first["detected_at"] == "1949-01-01T00:00:00+09:00"
    assert first["attempts"][0] == "1949-01-04T08:30:00+09:00"
    last = plan_json("--detected-at", "2099-12-28T08:36:00+09:00")  # Mon, last business day
    assert last["auto_correct_at"] == "2099-12-28T09:30:00+09:00"


@pytest.mark.parametrize(
    ("text", "suggested"),
    [
        ("2026-11-27", "2026-11-27T00:00:00+09:00"),
        ("2026-11-27T08:36", "2026-11-27T08:36:00+09:00"),
        ("2026-11-27 08:36:00", "2026-11-27T08:36:00+09:00"),
    ],
)
def test_plan_hint_for_naive_input_is_a_form_plan_accepts(text: str, suggested: str) -> None:
    result = run("plan", "--detected-at", text)
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.endswith(f"write e.g. {suggested}")
    assert plan_json("--detected-at", suggested)["detected_at"] == suggested
