"""The linkage simulator and the post-holiday scenario (pure, seeded)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from retry_pipeline.calendar import BusinessCalendar, parse_instant
from retry_pipeline.cli import main
from retry_pipeline.config import Settings
from retry_pipeline.model import CertificateKind
from retry_pipeline.policy import plan_attempts
from simulation.linkage import (
    DEFAULT_DAY,
    Feed,
    Morning,
    Registration,
    arrivals,
    default_feeds,
    post_holiday_morning,
    post_holiday_scenario,
    run_linkage,
)
from simulation.scenario import Scenario

JST = ZoneInfo("Asia/Tokyo")
SAFETY, INSURANCE, COMPLETION = (
    CertificateKind.SAFETY,
    CertificateKind.INSURANCE,
    CertificateKind.COMPLETION,
)
CALENDAR = BusinessCalendar(Settings())


def jst(day: date, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm, ss), tzinfo=JST)


@pytest.fixture(scope="module")
def morning() -> Morning:
    return post_holiday_morning(300, 7)


# -- the linkage itself, on a hand-made queue ------------------------------------


def test_run_linkage_copies_oldest_first_at_most_cap_per_run() -> None:
    day = date(2026, 5, 7)
    regs = [
        Registration(f"S{i}", SAFETY, f"V{i}", jst(date(2026, 5, 5), 10, i)) for i in range(5)
    ] + [Registration("S9", SAFETY, "V9", jst(day, 8, 15))]  # registered between two runs
    feed = Feed(SAFETY, time(8, 0), 10, cap=2, last_run=time(8, 30))
    runs = run_linkage(regs, [feed], [day])
    assert [(r.started_at, r.copied, r.backlog) for r in runs] == [
        (jst(day, 8, 0), ("S0", "S1"), 3),
        (jst(day, 8, 10), ("S2", "S3"), 1),
        (jst(day, 8, 20), ("S4", "S9"), 0),
        (jst(day, 8, 30), (), 0),
    ]
    # A batch is visible when its run ends: 20 s, plus half a second a record.
    assert arrivals(runs) == {
        "S0": jst(day, 8, 0, 21),
        "S1": jst(day, 8, 0, 21),
        "S2": jst(day, 8, 10, 21),
        "S3": jst(day, 8, 10, 21),
        "S4": jst(day, 8, 20, 21),
        "S9": jst(day, 8, 20, 21),
    }


def test_run_linkage_never_copies_before_registration() -> None:
    day = date(2026, 5, 7)
    regs = [Registration("S1", SAFETY, "V1", jst(day, 8, 5))]
    runs = run_linkage(regs, [Feed(SAFETY, time(8, 0), 10, cap=5, last_run=time(8, 10))], [day])
    assert [r.copied for r in runs] == [(), ("S1",)]


# -- the generated morning -------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_scenario() -> None:
    first = json.dumps(post_holiday_scenario(60, 11), ensure_ascii=False, indent=2)
    again = json.dumps(post_holiday_scenario(60, 11), ensure_ascii=False, indent=2)
    other = json.dumps(post_holiday_scenario(60, 12), ensure_ascii=False, indent=2)
    assert first == again
    assert first != other


def test_scenario_validates_with_one_report_per_application(morning: Morning) -> None:
    scenario = Scenario.model_validate(morning.scenario)
    messages = scenario.report_messages()
    assert len(messages) == 300
    assert len({m.application for m in messages}) == 300
    assert scenario.config.new_inspection_retry_from is not None
    assert scenario.config.new_inspection_retry_from <= DEFAULT_DAY  # new inspections retried


def test_default_day_is_the_first_business_day_after_golden_week() -> None:
    assert CALENDAR.is_business_day(DEFAULT_DAY)
    closed = [DEFAULT_DAY - timedelta(days=d) for d in range(1, 6)]
    assert not any(CALENDAR.is_business_day(d) for d in closed)
    assert CALENDAR.is_business_day(DEFAULT_DAY - timedelta(days=6))


@pytest.mark.parametrize("day", [date(2026, 5, 8), date(2026, 5, 5)])
def test_refuses_a_day_that_is_not_right_after_a_holiday(day: date) -> None:
    with pytest.raises(ValueError):
        post_holiday_scenario(10, 1, day)


def test_other_post_holiday_day_coming_of_age_day() -> None:
    day = date(2027, 1, 12)  # Tue after Sat, Sun and Coming of Age Day (Mon 2027-01-11)
    scenario = Scenario.model_validate(post_holiday_scenario(40, 3, day))
    assert {m.detected_at.astimezone(JST).date() for m in scenario.report_messages()} == {day}


def test_capped_batches_respected_per_run(morning: Morning) -> None:
    caps = {f.kind: f.cap for f in morning.feeds}
    assert all(len(r.copied) <= caps[r.kind] for r in morning.runs)
    # After the holiday the cap binds: the first runs of the morning are full.
    day_runs = [r for r in morning.runs if r.started_at.astimezone(JST).date() == morning.day]
    first = {k: next(r for r in day_runs if r.kind is k) for k in caps}
    assert all(len(first[k].copied) == caps[k] and first[k].backlog > 0 for k in caps)
    # Each record is copied once, oldest first, and never before its registration.
    registered = {r.cert_id: r.registered_at for r in morning.registrations}
    seen: Counter[str] = Counter()
    for kind in caps:
        order = [c for r in morning.runs if r.kind is kind for c in r.copied]
        assert [registered[c] for c in order] == sorted(registered[c] for c in order)
        seen.update(order)
    assert max(seen.values()) == 1
    assert all(
        registered[c] <= r.started_at for r in morning.runs for c in r.copied
    )  # FIFO never reaches ahead of time


def test_scenario_certificates_respect_the_caps(morning: Morning) -> None:
    caps = {f.kind.value: f.cap for f in morning.feeds}
    batches = Counter((c["kind"], c["available_at"]) for c in morning.scenario["certificates"])
    assert all(n <= caps[kind] for (kind, _), n in batches.items())


def test_timetable_per_kind_on_business_days_only(morning: Morning) -> None:
    starts: dict[CertificateKind, list[datetime]] = defaultdict(list)
    for run in morning.runs:
        starts[run.kind].append(run.started_at.astimezone(JST))
    day = morning.day
    on_day = {k: [t.strftime("%H:%M") for t in v if t.date() == day] for k, v in starts.items()}
    assert on_day[SAFETY][:4] == ["08:00", "08:10", "08:20", "08:30"]
    assert on_day[COMPLETION][:3] == ["08:00", "08:10", "08:20"]
    assert on_day[INSURANCE][:4] == ["08:05", "08:30", "08:55", "09:20"]
    assert on_day[SAFETY][-1] == on_day[COMPLETION][-1] == "20:00"
    gaps = {k: {b - a for a, b in pairwise(v) if a.date() == b.date()} for k, v in starts.items()}
    assert gaps == {
        SAFETY: {timedelta(minutes=10)},
        COMPLETION: {timedelta(minutes=10)},
        INSURANCE: {timedelta(minutes=25)},
    }
    # No run on the holiday: the linkage works business days only.
    days = {t.date() for v in starts.values() for t in v}
    assert days == {date(2026, 5, 1), date(2026, 5, 7), date(2026, 5, 8)}


def test_insurance_runs_less_often_yet_twice_within_sixty_minutes() -> None:
    feeds = {f.kind: f for f in default_feeds()}
    assert feeds[INSURANCE].every_min > feeds[SAFETY].every_min
    day = DEFAULT_DAY
    runs = run_linkage([], list(feeds.values()), [day])
    ends = [r.finished_at for r in runs if r.kind is INSURANCE]
    t = jst(day, 8, 0)
    while t <= jst(day, 19, 0):  # every 60-minute window of the linkage's day
        assert sum(t <= e < t + timedelta(minutes=60) for e in ends) >= 2, t
        t += timedelta(minutes=1)
    # The notice's reason for six: every chain of six attempts sees two insurance runs.
    detected = jst(day, 8, 30)
    while detected < jst(day, 15, 0):
        attempts = plan_attempts(detected, CALENDAR).attempts
        assert len(attempts) == 6
        assert sum(detected < e <= attempts[-1] for e in ends) >= 2, detected
        detected += timedelta(minutes=1)


Spec = dict[str, Any]


def _present(kind: str, vehicle: str, key: tuple[str, str] | None, certs: list[Spec]) -> list[Spec]:
    if kind == "insurance":
        return [
            c
            for c in certs
            if c["kind"] == "insurance" and (c["insurer_id"], c["insurance_no"]) == key
        ]
    return [c for c in certs if c["kind"] == kind and c["vehicle"] == vehicle]


def test_every_reported_certificate_really_absent_at_detection(morning: Morning) -> None:
    certs = morning.scenario["certificates"]
    arrived_late = never = 0
    for report in morning.scenario["reports"]:
        at = parse_instant(report["detected_at"])
        safety = _present("safety", report["vehicle"], None, certs)
        key: tuple[str, str] | None
        if report["procedure"] == "new":
            key = (report["insurer_id"], report["insurance_no"])
        else:
            key = (safety[0]["insurer_id"], safety[0]["insurance_no"]) if safety else None
        for kind in report["missing"]:
            found = _present(kind, report["vehicle"], key, certs)
            assert all(parse_instant(c["available_at"]) > at for c in found), report
            arrived_late += bool(found)
            never += not found
        for kind in report["confirmed"]:
            found = _present(kind, report["vehicle"], key, certs)
            assert found and all(parse_instant(c["available_at"]) <= at for c in found), report
    assert arrived_late > 200  # mostly the linkage's lag,
    assert 10 <= never <= 30  # a few never registered upstream


def test_detection_times_morning_and_a_few_near_the_close(morning: Morning) -> None:
    times = [parse_instant(r["detected_at"]) for r in morning.scenario["reports"]]
    day = morning.day
    assert {t.date() for t in times} == {day}
    morning_ = [t for t in times if jst(day, 8, 30) <= t < jst(day, 11, 30)]
    afternoon = [t for t in times if jst(day, 15, 0) <= t < jst(day, 16, 0)]
    assert len(morning_) + len(afternoon) == len(times)
    assert 3 <= len(afternoon) <= 10
    assert jst(day, 15, 55) in afternoon  # R12: no slot left before the close
    assert sum(t.second == 0 for t in times) > len(times) // 2  # mostly whole minutes


def test_mix_of_procedures_and_missing_kinds(morning: Morning) -> None:
    mix = Counter(
        (r["procedure"], tuple(r["missing"]), tuple(r["confirmed"]))
        for r in morning.scenario["reports"]
    )
    assert mix[("continuous", ("safety",), ())] > 100
    assert mix[("continuous", ("insurance",), ("safety",))] > 20  # the slower insurance feed
    new = sum(n for (procedure, _, _), n in mix.items() if procedure == "new")
    assert 5 <= new <= 30


# -- `retry-pipeline scenario post-holiday` (no Redis: it only writes the file) ------


def test_cli_writes_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    args = ["scenario", "post-holiday", "--applications", "25", "--seed", "5"]
    first = CliRunner().invoke(main, args)
    again = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "s.json")])
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    assert (tmp_path / "s.json").read_bytes() == first.stdout_bytes
    assert json.loads(first.stdout) == post_holiday_scenario(25, 5)


def test_cli_refuses_a_day_that_does_not_follow_a_holiday() -> None:
    result = CliRunner().invoke(main, ["scenario", "post-holiday", "--date", "2026-05-08"])
    assert result.exit_code == 2
    assert "2026-05-07 is a business day" in result.output


def test_batches_land_well_before_the_next_grid_slot(morning: Morning) -> None:
    # An attempt judges as of its slot; a batch committed just before a slot would
    # make the simulation's result hang on how fast the harness writes it.
    for run in morning.runs:
        end = run.finished_at.astimezone(JST)
        into_step_s = (end.minute * 60 + end.second - 30 * 60) % 600
        assert 600 - into_step_s >= 240, run
