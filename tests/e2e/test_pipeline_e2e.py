"""The whole pipeline for real: worker, beat and a private Redis on the scaled clock.

To keep CI short, many applications share a few scenarios; each scenario runs once
per module and every application's entry of the report is asserted literally.
Times are Japan time; the report's instants carry +09:00.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.store import RetryStore
from simulation import examination

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

INSURER = "INS-E2E"
RunScenario = Callable[[dict[str, Any], Path], dict[str, Any]]  # conftest.run_scenario


# -- scenario builders ---------------------------------------------------------------


def continuous(
    app: str, detected_at: str, missing: list[str], confirmed: list[str] | None = None
) -> dict[str, Any]:
    return {
        "application": app,
        "office": "OFFICE-E2E",
        "procedure": "continuous",
        "vehicle": f"V-{app}",
        "missing": missing,
        "confirmed": confirmed or [],
        "detected_at": detected_at,
    }


def new_inspection(app: str, detected_at: str, missing: list[str]) -> dict[str, Any]:
    return {
        "application": app,
        "office": "OFFICE-E2E",
        "procedure": "new",
        "vehicle": f"V-{app}",
        "missing": missing,
        "confirmed": [],
        "detected_at": detected_at,
        "insurer_id": INSURER,
        "insurance_no": f"NO-{app}",
    }


def safety(
    app: str, available_at: str, inspected_on: str, deleted_at: str | None = None
) -> dict[str, Any]:
    """The safety certificate of ``app``'s vehicle, naming insurance ``NO-{app}``."""
    cert = {
        "id": f"S-{app}",
        "kind": "safety",
        "vehicle": f"V-{app}",
        "available_at": available_at,
        "inspected_on": inspected_on,
        "insurer_id": INSURER,
        "insurance_no": f"NO-{app}",
    }
    if deleted_at is not None:
        cert["deleted_at"] = deleted_at
    return cert


def insurance(app: str, available_at: str) -> dict[str, Any]:
    return {
        "id": f"I-{app}",
        "kind": "insurance",
        "vehicle": f"V-{app}",
        "available_at": available_at,
        "insurer_id": INSURER,
        "insurance_no": f"NO-{app}",
    }


def completion(app: str, available_at: str, issued_on: str) -> dict[str, Any]:
    return {
        "id": f"C-{app}",
        "kind": "completion",
        "vehicle": f"V-{app}",
        "available_at": available_at,
        "issued_on": issued_on,
    }


def entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_app = {e["application"]: e for e in report["applications"]}
    assert len(by_app) == len(report["applications"]), "one entry per application"
    return by_app


# -- the main scenario: Fri 2026-11-27 to Tue 2027-01-12 ------------------------------
#
# Fri 11-27 and Mon 11-30 are business days, Sat/Sun 11-28/29 not; a close signal
# comes at 10:45 on Mon 11-30; 12-29..01-03 is the year-end closure; Mon 2027-01-11
# is Coming of Age Day. New-inspection retries start on Mon 2026-11-30.

FRI_0836_ATTEMPTS = [
    "2026-11-27T08:40:00+09:00",
    "2026-11-27T08:50:00+09:00",
    "2026-11-27T09:00:00+09:00",
    "2026-11-27T09:10:00+09:00",
    "2026-11-27T09:20:00+09:00",
    "2026-11-27T09:30:00+09:00",
]
MON_1005_ATTEMPTS = [
    "2026-11-30T10:10:00+09:00",
    "2026-11-30T10:20:00+09:00",
    "2026-11-30T10:30:00+09:00",
    "2026-11-30T10:40:00+09:00",
    "2026-12-01T08:30:00+09:00",
]

MAIN: dict[str, Any] = {
    "config": {"new_inspection_retry_from": "2026-11-30"},
    "close_signals": ["2026-11-30T10:45:00+09:00"],
    "certificates": [
        # Certificates arrive just after a slot, so the driver has most of a slot
        # (about a real second) to write them before the next attempt looks.
        # found between attempts 2 and 3 (08:50 < 08:51 <= 09:00)
        safety("E2E-K3", "2026-11-27T08:51:00+09:00", "2026-11-20"),
        insurance("E2E-K3", "2026-11-26T17:00:00+09:00"),
        # found between attempts 4 and 5 (09:10 < 09:11 <= 09:20)
        safety("E2E-K5", "2026-11-27T09:11:00+09:00", "2026-11-20"),
        insurance("E2E-K5", "2026-11-26T17:00:00+09:00"),
        # R3 within a chain: present at 08:50, deleted before 09:00; its insurance never
        # arrives, so the chain is still live at 09:00
        safety(
            "E2E-R3-CHAIN",
            "2026-11-27T08:41:00+09:00",
            "2026-11-20",
            deleted_at="2026-11-27T08:51:00+09:00",
        ),
        # R4: the duplicate report's certificate arrives at 09:01
        safety("E2E-DUP", "2026-11-27T09:01:00+09:00", "2026-11-20"),
        insurance("E2E-DUP", "2026-11-26T17:00:00+09:00"),
        # new inspection after its start date: completion arrives 09:11
        completion("E2E-NEW-AFTER", "2026-11-30T09:11:00+09:00", "2026-11-01"),
        insurance("E2E-NEW-AFTER", "2026-11-26T17:00:00+09:00"),
        # R4 merge of a new inspection: completion 09:05, insurance 09:21
        completion("E2E-NEW-MERGE", "2026-11-30T09:05:00+09:00", "2026-11-01"),
        insurance("E2E-NEW-MERGE", "2026-11-30T09:21:00+09:00"),
        # R10/R11: arrives in the evening after the close signal
        safety("E2E-CLOSE-RESUME", "2026-11-30T18:00:00+09:00", "2026-11-25"),
        insurance("E2E-CLOSE-RESUME", "2026-11-30T18:00:00+09:00"),
        # holiday: arrives on Coming of Age Day, before the Tuesday attempt
        safety("E2E-HOLIDAY-RESUME", "2027-01-11T12:00:00+09:00", "2027-01-05"),
        insurance("E2E-HOLIDAY-RESUME", "2027-01-11T12:00:00+09:00"),
    ],
    "reports": [
        continuous("E2E-0836", "2026-11-27T08:36:00+09:00", ["safety"]),
        continuous("E2E-K3", "2026-11-27T08:36:00+09:00", ["safety"]),
        continuous("E2E-K5", "2026-11-27T08:36:00+09:00", ["safety"]),
        continuous(
            "E2E-R3-REPORT", "2026-11-27T08:37:00+09:00", ["insurance"], ["safety", "insurance"]
        ),
        continuous("E2E-R3-CHAIN", "2026-11-27T08:36:00+09:00", ["safety"]),
        # R4: the same report twice, well before the first slot (08:40)
        continuous("E2E-DUP", "2026-11-27T08:31:00+09:00", ["safety"]),
        continuous("E2E-DUP", "2026-11-27T08:33:00+09:00", ["safety"]),
        new_inspection("E2E-NEW-BEFORE", "2026-11-27T09:00:00+09:00", ["completion"]),
        continuous("E2E-R11-1525", "2026-11-27T15:25:00+09:00", ["safety"]),
        continuous("E2E-R12", "2026-11-27T15:55:00+09:00", ["safety"]),
        continuous("E2E-R13-SUNDAY", "2026-11-29T10:00:00+09:00", ["safety"]),
        new_inspection("E2E-NEW-AFTER", "2026-11-30T09:02:00+09:00", ["completion"]),
        new_inspection("E2E-NEW-MERGE", "2026-11-30T09:01:00+09:00", ["completion"]),
        new_inspection("E2E-NEW-MERGE", "2026-11-30T09:02:00+09:00", ["insurance"]),
        continuous("E2E-CLOSE-RESUME", "2026-11-30T10:05:00+09:00", ["safety"]),
        continuous("E2E-CLOSE-NEVER", "2026-11-30T10:05:00+09:00", ["safety"]),
        continuous("E2E-YEAR-END", "2026-12-28T15:35:00+09:00", ["safety"]),
        continuous("E2E-HOLIDAY-NEVER", "2027-01-08T15:35:00+09:00", ["safety"]),
        continuous("E2E-HOLIDAY-RESUME", "2027-01-08T15:45:00+09:00", ["safety"]),
    ],
}


@pytest.fixture(scope="module")
def main_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-main")


@pytest.fixture(scope="module")
def main_report(run_scenario: RunScenario, main_workdir: Path) -> dict[str, Any]:
    return run_scenario(MAIN, main_workdir)


@pytest.fixture(scope="module")
def main_db(main_report: dict[str, Any], main_workdir: Path) -> Iterator[Engine]:
    """The finished simulation's database (retry history, received outcomes)."""
    engine = make_engine(f"sqlite:///{main_workdir / 'simulation.sqlite3'}")
    yield engine
    engine.dispose()


def test_report_has_one_entry_per_application_and_nothing_refused(
    main_report: dict[str, Any],
) -> None:
    assert sorted(entries(main_report)) == sorted({r["application"] for r in MAIN["reports"]})
    assert "refused" not in main_report


def test_r9_seed_example_0836_never_found(main_report: dict[str, Any]) -> None:
    assert entries(main_report)["E2E-0836"] == {
        "application": "E2E-0836",
        "outcome": "auto_corrected",
        "attempts": FRI_0836_ATTEMPTS,
        "decided_at": "2026-11-27T09:30:00+09:00",
        "missing": ["safety"],
    }


@pytest.mark.parametrize(
    ("application", "attempts"),
    [
        ("E2E-K3", FRI_0836_ATTEMPTS[:3]),
        ("E2E-K5", FRI_0836_ATTEMPTS[:5]),
    ],
)
def test_r8_found_at_attempt_k_resumes_at_the_first_slot_at_or_after_it(
    main_report: dict[str, Any], application: str, attempts: list[str]
) -> None:
    assert entries(main_report)[application] == {
        "application": application,
        "outcome": "resumed",
        "attempts": attempts,
        "decided_at": attempts[-1],
        "missing": [],
    }


def test_r3_at_report_time_auto_corrects_at_detection(main_report: dict[str, Any]) -> None:
    assert entries(main_report)["E2E-R3-REPORT"] == {
        "application": "E2E-R3-REPORT",
        "outcome": "auto_corrected",
        "attempts": [],
        "decided_at": "2026-11-27T08:37:00+09:00",
        "missing": ["insurance"],
    }


def test_r3_found_then_deleted_auto_corrects_at_the_next_slot(
    main_report: dict[str, Any],
) -> None:
    assert entries(main_report)["E2E-R3-CHAIN"] == {
        "application": "E2E-R3-CHAIN",
        "outcome": "auto_corrected",
        "attempts": FRI_0836_ATTEMPTS[:3],
        "decided_at": "2026-11-27T09:00:00+09:00",
        "missing": ["safety"],
    }


def test_r4_duplicate_report_is_one_entry_of_one_chain(
    main_report: dict[str, Any], main_db: Engine
) -> None:
    assert entries(main_report)["E2E-DUP"] == {
        "application": "E2E-DUP",
        "outcome": "resumed",
        "attempts": FRI_0836_ATTEMPTS[:4],
        "decided_at": "2026-11-27T09:10:00+09:00",
        "missing": [],
    }
    with RetryStore(main_db).unit() as u:
        history = u.history.lines(application="E2E-DUP")
    assert len({h.chain_id for h in history}) == 1
    events = [h.event for h in history]
    assert events == ["reported", "merged", "attempt", "attempt", "attempt", "resumed"]
    received = [o for o in examination.received(main_db) if o.application == "E2E-DUP"]
    assert len(received) == 1


def test_r4_second_report_adds_its_certificate_to_the_live_chain(
    main_report: dict[str, Any], main_db: Engine
) -> None:
    # Resumed only once the merged-in insurance arrived (09:21), not with the completion.
    assert entries(main_report)["E2E-NEW-MERGE"] == {
        "application": "E2E-NEW-MERGE",
        "outcome": "resumed",
        "attempts": [
            "2026-11-30T09:10:00+09:00",
            "2026-11-30T09:20:00+09:00",
            "2026-11-30T09:30:00+09:00",
        ],
        "decided_at": "2026-11-30T09:30:00+09:00",
        "missing": [],
    }
    with RetryStore(main_db).unit() as u:
        history = u.history.lines(application="E2E-NEW-MERGE")
    assert len({h.chain_id for h in history}) == 1


def test_r1_new_inspection_before_its_start_date_is_auto_corrected_at_once(
    main_report: dict[str, Any],
) -> None:
    assert entries(main_report)["E2E-NEW-BEFORE"] == {
        "application": "E2E-NEW-BEFORE",
        "outcome": "auto_corrected",
        "attempts": [],
        "decided_at": "2026-11-27T09:00:00+09:00",
        "missing": ["completion"],
    }


def test_r1_new_inspection_from_its_start_date_is_retried(main_report: dict[str, Any]) -> None:
    assert entries(main_report)["E2E-NEW-AFTER"] == {
        "application": "E2E-NEW-AFTER",
        "outcome": "resumed",
        "attempts": ["2026-11-30T09:10:00+09:00", "2026-11-30T09:20:00+09:00"],
        "decided_at": "2026-11-30T09:20:00+09:00",
        "missing": [],
    }


def test_r11_worked_example_friday_1525(main_report: dict[str, Any]) -> None:
    assert entries(main_report)["E2E-R11-1525"] == {
        "application": "E2E-R11-1525",
        "outcome": "auto_corrected",
        "attempts": [
            "2026-11-27T15:30:00+09:00",
            "2026-11-27T15:40:00+09:00",
            "2026-11-27T15:50:00+09:00",
            "2026-11-30T08:30:00+09:00",
        ],
        "decided_at": "2026-11-30T08:30:00+09:00",
        "missing": ["safety"],
    }


def test_r12_detection_at_1555_gets_one_attempt_next_business_day_0830(
    main_report: dict[str, Any],
) -> None:
    assert entries(main_report)["E2E-R12"] == {
        "application": "E2E-R12",
        "outcome": "auto_corrected",
        "attempts": ["2026-11-30T08:30:00+09:00"],
        "decided_at": "2026-11-30T08:30:00+09:00",
        "missing": ["safety"],
    }


def test_r13_detection_on_sunday_gets_six_attempts_from_monday_0830(
    main_report: dict[str, Any],
) -> None:
    assert entries(main_report)["E2E-R13-SUNDAY"] == {
        "application": "E2E-R13-SUNDAY",
        "outcome": "auto_corrected",
        "attempts": [
            "2026-11-30T08:30:00+09:00",
            "2026-11-30T08:40:00+09:00",
            "2026-11-30T08:50:00+09:00",
            "2026-11-30T09:00:00+09:00",
            "2026-11-30T09:10:00+09:00",
            "2026-11-30T09:20:00+09:00",
        ],
        "decided_at": "2026-11-30T09:20:00+09:00",
        "missing": ["safety"],
    }


def test_r10_close_signal_parks_and_next_day_0830_attempt_resumes(
    main_report: dict[str, Any],
) -> None:
    assert entries(main_report)["E2E-CLOSE-RESUME"] == {
        "application": "E2E-CLOSE-RESUME",
        "outcome": "resumed",
        "attempts": MON_1005_ATTEMPTS,
        "decided_at": "2026-12-01T08:30:00+09:00",
        "missing": [],
    }


def test_r11_worked_example_close_signal_never_found(main_report: dict[str, Any]) -> None:
    assert entries(main_report)["E2E-CLOSE-NEVER"] == {
        "application": "E2E-CLOSE-NEVER",
        "outcome": "auto_corrected",
        "attempts": MON_1005_ATTEMPTS,
        "decided_at": "2026-12-01T08:30:00+09:00",
        "missing": ["safety"],
    }


def test_year_end_closure_between_close_and_the_next_attempt(
    main_report: dict[str, Any],
) -> None:
    # Mon 12-28 parks at close; 12-29..01-03 are closed; next attempt Mon 2027-01-04.
    assert entries(main_report)["E2E-YEAR-END"] == {
        "application": "E2E-YEAR-END",
        "outcome": "auto_corrected",
        "attempts": [
            "2026-12-28T15:40:00+09:00",
            "2026-12-28T15:50:00+09:00",
            "2027-01-04T08:30:00+09:00",
        ],
        "decided_at": "2027-01-04T08:30:00+09:00",
        "missing": ["safety"],
    }


def test_national_holiday_between_close_and_the_next_attempt(
    main_report: dict[str, Any],
) -> None:
    # Fri 2027-01-08 parks at close; Mon 01-11 is Coming of Age Day: Tue 01-12 08:30.
    assert entries(main_report)["E2E-HOLIDAY-NEVER"] == {
        "application": "E2E-HOLIDAY-NEVER",
        "outcome": "auto_corrected",
        "attempts": [
            "2027-01-08T15:40:00+09:00",
            "2027-01-08T15:50:00+09:00",
            "2027-01-12T08:30:00+09:00",
        ],
        "decided_at": "2027-01-12T08:30:00+09:00",
        "missing": ["safety"],
    }
    assert entries(main_report)["E2E-HOLIDAY-RESUME"] == {
        "application": "E2E-HOLIDAY-RESUME",
        "outcome": "resumed",
        "attempts": ["2027-01-08T15:50:00+09:00", "2027-01-12T08:30:00+09:00"],
        "decided_at": "2027-01-12T08:30:00+09:00",
        "missing": [],
    }


def test_every_outcome_reached_the_examination_side_exactly_once_each(
    main_report: dict[str, Any], main_db: Engine
) -> None:
    received = examination.received(main_db)
    by_app: dict[str, list[examination.ReceivedOutcome]] = {}
    for o in received:
        by_app.setdefault(o.application, []).append(o)
    assert sorted(by_app) == sorted(entries(main_report))
    for app, outcomes in by_app.items():
        assert len(outcomes) == 1, app  # one chain, one ending (DESIGN 5)
        (o,) = outcomes
        assert o.idempotency_key == f"{o.chain_id}:{o.outcome}"
        assert o.outcome == entries(main_report)[app]["outcome"]
        expected_task = (
            "examination.resume_pre_review"
            if o.outcome == "resumed"
            else "examination.auto_correct"
        )
        assert o.task == expected_task


# -- determinism and the CLI ------------------------------------------------------------

SMALL: dict[str, Any] = {
    "certificates": [
        safety("DET-FOUND", "2026-11-27T08:51:00+09:00", "2026-11-20"),
        insurance("DET-FOUND", "2026-11-26T17:00:00+09:00"),
    ],
    "reports": [
        continuous("DET-NEVER", "2026-11-27T08:36:00+09:00", ["safety"]),
        continuous("DET-FOUND", "2026-11-27T08:36:00+09:00", ["safety"]),
        continuous("DET-R3", "2026-11-27T08:37:00+09:00", ["safety"], ["safety"]),
    ],
}

SMALL_REPORT = {
    "applications": [
        {
            "application": "DET-FOUND",
            "outcome": "resumed",
            "attempts": FRI_0836_ATTEMPTS[:3],
            "decided_at": "2026-11-27T09:00:00+09:00",
            "missing": [],
        },
        {
            "application": "DET-NEVER",
            "outcome": "auto_corrected",
            "attempts": FRI_0836_ATTEMPTS,
            "decided_at": "2026-11-27T09:30:00+09:00",
            "missing": ["safety"],
        },
        {
            "application": "DET-R3",
            "outcome": "auto_corrected",
            "attempts": [],
            "decided_at": "2026-11-27T08:37:00+09:00",
            "missing": ["safety"],
        },
    ]
}


def cli_path() -> str:
    return str(Path(sys.executable).with_name("retry-pipeline"))


@pytest.fixture(scope="module")
def cli_run(
    any_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    """``retry-pipeline simulate`` on the small scenario, as a user runs it."""
    workdir = tmp_path_factory.mktemp("e2e-cli")
    scenario_file = workdir / "small.json"
    scenario_file.write_text(json.dumps(SMALL))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    return subprocess.run(
        [
            cli_path(),
            "simulate",
            str(scenario_file),
            "--broker-url",
            any_broker,
            "--workdir",
            str(workdir / "run"),
            "--timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )


def test_cli_simulate_prints_exactly_one_json_object_on_stdout(
    cli_run: subprocess.CompletedProcess[str],
) -> None:
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    text = cli_run.stdout.strip()
    report, end = json.JSONDecoder().raw_decode(text)
    assert end == len(text), "stdout holds more than one JSON object"
    assert report == SMALL_REPORT
    assert cli_run.stderr.strip()  # progress goes to stderr


def test_report_is_deterministic_across_runs(
    cli_run: subprocess.CompletedProcess[str],
    run_scenario: RunScenario,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    first = json.loads(cli_run.stdout)
    second = run_scenario(SMALL, tmp_path_factory.mktemp("e2e-again"))
    assert second == first
    assert second == SMALL_REPORT
