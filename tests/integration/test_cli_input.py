"""Bad input to every command and to the ``close`` task: exit 2 (or a dead letter), one
line, nothing stored; a hypothesis sweep per command asserts exit code 0 or 2 and no
traceback.

The commands that read the database run against a migrated SQLite file, then
PostgreSQL (``db_url``); "today" is Mon 2026-11-30 in Japan, from a clock file.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.cli import main
from retry_pipeline.cli_checks import BadInput, writable_output
from retry_pipeline.clock import FileClock, FixedClock

TOKYO = ZoneInfo("Asia/Tokyo")
TODAY_1000 = datetime(2026, 11, 30, 10, 0, tzinfo=TOKYO)  # Mon, a business day

SWEEP = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RETRY_PIPELINE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: the test database and a clock file at Mon 10:00 (scale 1)."""
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, TODAY_1000, 1.0)
    return {"RETRY_PIPELINE_DATABASE_URL": db_url, "RETRY_PIPELINE_CLOCK_FILE": str(clock_file)}


def run(env: dict[str, str] | None, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def assert_clean(result: Result) -> None:
    """Exit 0 or 2, never a traceback; a refusal is one ``Error:`` line."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 2:  # one line, no usage block: ``Error: <what is wrong>``
        lines = result.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:"), result.output


def close_signal_count(store: RetryStore) -> int:
    with store.unit() as u:
        return len(u.signals.between(date(1949, 1, 1), date(2099, 12, 31)))


# -- close --at: only an instant on today's Japan date (R10) -----------------------------


@pytest.mark.parametrize(
    "at",
    [
        "2026-11-29T15:00:00+09:00",  # yesterday
        "2026-12-01T09:00:00+09:00",  # tomorrow
        "2026-11-30T15:00:00Z",  # Tue 00:00 in Japan
        "2026-11-29T14:59:59Z",  # Sun 23:59:59 in Japan
        "2020-01-01T00:00:00+09:00",
    ],
)
def test_close_at_another_day_exits_2_and_stores_nothing(
    env: dict[str, str], store: RetryStore, at: str
) -> None:
    result = run(env, "close", "--at", at)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.output.strip().splitlines()  # ClickException: no usage block
    assert line.startswith("Error: --at ")
    assert line.endswith(
        "is not on today's Japan date (2026-11-30): "
        "a close signal names an instant on the day it is sent (R10)"
    )
    assert close_signal_count(store) == 0


@pytest.mark.parametrize(
    ("at", "stored"),
    [
        ("2026-11-30T15:00:00+09:00", "2026-11-30T15:00:00+09:00"),
        ("2026-11-29T15:00:00Z", "2026-11-30T00:00:00+09:00"),  # today 00:00 in Japan
        ("2026-11-30T06:45:00Z", "2026-11-30T15:45:00+09:00"),
    ],
)
def test_close_at_today_is_stored(
    env: dict[str, str], store: RetryStore, at: str, stored: str
) -> None:
    result = run(env, "close", "--at", at)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f'{{"close_at": "{stored}"')
    assert close_signal_count(store) == 1


def test_close_task_refuses_another_day_as_a_dead_letter(
    db_url: str, store: RetryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retry_pipeline import tasks
    from retry_pipeline.adapters.db import make_engine
    from retry_pipeline.adapters.registry import SqlCertificateRegistry
    from retry_pipeline.calendar import BusinessCalendar
    from retry_pipeline.config import Settings
    from retry_pipeline.errors import MessageRefused
    from retry_pipeline.service.pipeline import Pipeline

    engine = make_engine(db_url, write_lock=False)
    service = Pipeline(
        store=store,
        registry=SqlCertificateRegistry(engine, Settings()),
        calendar=BusinessCalendar(Settings()),
        clock=FixedClock(TODAY_1000),
        dispatcher=None,  # type: ignore[arg-type]  # a close never sends an attempt
        gateway=None,  # type: ignore[arg-type]
    )
    monkeypatch.setattr(tasks, "service", lambda: service)
    try:
        for other_day in ("2026-12-01T09:00:00+09:00", "9999-12-31T23:59:00+09:00"):
            with pytest.raises(MessageRefused):  # a dead letter first, then the task fails
                tasks.close.run(other_day)
        assert close_signal_count(store) == 0
        with store.unit() as u:
            letters = u.dead_letters.newest(10)
        assert [(d.task, d.reason) for d in letters] == [
            (
                "retry_pipeline.close",
                "'9999-12-31T23:59:00+09:00' is outside the calendar "
                "(1949-01-01..2099-12-31 Japan time)",
            ),
            (
                "retry_pipeline.close",
                "2026-12-01T09:00:00+09:00 is not on today's Japan date (2026-11-30): "
                "a close signal names an instant on the day it is sent (R10)",
            ),
        ]
        assert tasks.close.run("2026-11-30T15:00:00+09:00") == 0  # today: stored, no chain
        assert close_signal_count(store) == 1
    finally:
        engine.dispose()


# -- hypothesis: every command, arbitrary input -------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    lambda d: timezone(timedelta(minutes=int(d.total_seconds() // 60)))
)
aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
).map(lambda d: d.isoformat())
naive = st.datetimes().map(lambda d: d.isoformat())
days = st.dates().map(lambda d: d.isoformat())
instants = st.one_of(aware, naive, days, texts)


@SWEEP
@given(detected=instants, close=st.lists(instants, max_size=2))
def test_sweep_plan(detected: str, close: list[str]) -> None:
    args = ["plan", "--detected-at", detected]
    for c in close:
        args += ["--close-signal", c]
    assert_clean(run(None, *args))


@SWEEP
@given(
    start=st.one_of(days, texts),
    count=st.one_of(st.integers(-5, 5000), texts),
    lang=st.sampled_from(["ja", "en", "fr", ""]),
    as_json=st.booleans(),
)
def test_sweep_calendar(start: str, count: int | str, lang: str, as_json: bool) -> None:
    args = ["calendar", "--from", start, "--days", str(count), "--lang", lang]
    assert_clean(run(None, *args, *(["--json"] if as_json else [])))


@SWEEP
@given(at=instants)
def test_sweep_close(env: dict[str, str], at: str) -> None:
    assert_clean(run(env, "close", "--at", at))


@SWEEP
@given(office=texts, application=st.one_of(st.none(), texts), as_json=st.booleans())
def test_sweep_status(
    env: dict[str, str], office: str, application: str | None, as_json: bool
) -> None:
    args = ["status", "--office", office]
    if application is not None:
        args += ["--application", application]
    result = run(env, *args, *(["--json"] if as_json else []))
    if result.exit_code == 1:  # "no retry record": a clear line, not a fault
        assert (
            result.output
            == f"事務所 {office}：申請 {application} はリトライ対象の記録がありません\n"
        )
        return
    assert_clean(result)


@SWEEP
@given(limit=st.one_of(st.integers(-10, 200_000), texts), as_json=st.booleans())
def test_sweep_dead_letters(env: dict[str, str], limit: int | str, as_json: bool) -> None:
    assert_clean(run(env, "dead-letters", "--limit", str(limit), *(["--json"] if as_json else [])))


@SWEEP
@given(revision=texts.filter(lambda r: r.strip() not in ("head", "heads", "base")))
def test_sweep_db_upgrade(env: dict[str, str], revision: str) -> None:
    assert_clean(run(env, "db", "upgrade", "--revision", revision))


@SWEEP
@given(
    applications=st.one_of(st.integers(-5, 6000), texts),
    seed=st.one_of(st.integers(), texts),
    day=st.one_of(days, texts),
)
def test_sweep_scenario_post_holiday(applications: int | str, seed: int | str, day: str) -> None:
    # --date is the input `demo` shares (the same function builds its scenario).
    count = applications if isinstance(applications, str) else min(applications, 3)
    args = ["scenario", "post-holiday", "--applications", str(count), "--seed", str(seed)]
    assert_clean(run(None, *args, "--date", day))


@SWEEP
@given(content=st.one_of(st.binary(max_size=200), texts.map(str.encode)))
def test_sweep_simulate_and_fault_matrix(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    # Nothing here is a valid scenario (a report needs every field): refused before a run.
    path = tmp_path_factory.mktemp("scenario") / "s.json"
    path.write_bytes(content)
    for command in ("simulate", "fault-matrix"):
        result = run(None, command, str(path))
        assert_clean(result)
        assert result.exit_code == 2


def test_output_in_a_missing_folder_is_made(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "s.json"
    result = run(None, "scenario", "post-holiday", "--applications", "2", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_text("utf-8").startswith("{")


def test_output_under_a_file_is_refused_before_a_fault_run(tmp_path: Path) -> None:
    scenario = tmp_path / "s.json"
    assert (
        run(
            None, "scenario", "post-holiday", "--applications", "2", "--output", str(scenario)
        ).exit_code
        == 0
    )
    # The matrix would run for minutes, then fail to write: it is refused first.
    result = run(None, "fault-matrix", str(scenario), "--output", str(scenario / "table.md"))
    assert_clean(result)
    assert result.exit_code == 2 and "cannot make its folder" in result.output, result.output


def test_output_that_is_a_folder_is_refused_and_nothing_is_left_behind(tmp_path: Path) -> None:
    result = run(None, "scenario", "post-holiday", "--applications", "2", "--output", str(tmp_path))
    assert_clean(result)
    assert result.exit_code == 2 and "is a directory" in result.output, result.output
    with pytest.raises(BadInput, match="is a folder"):
        writable_output(str(tmp_path))
    # a path that can be written is tried for real, and the trial file does not stay
    target = tmp_path / "later.json"
    assert writable_output(str(target)) == target
    assert not target.exists()


def test_output_the_file_system_refuses_is_refused_even_for_root(tmp_path: Path) -> None:
    """``/proc`` refuses new files to every user, root included (os.access does not)."""
    result = run(
        None, "scenario", "post-holiday", "--applications", "2", "--output", "/proc/rp-out.json"
    )
    assert_clean(result)
    assert result.exit_code == 2 and "not writable" in result.output, result.output


def test_output_that_is_a_dangling_link_or_not_a_file_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(BadInput, match="a link to nothing"):
        writable_output(str(link))
    assert link.is_symlink() and not (tmp_path / "nowhere.json").exists()  # left alone
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="not a regular file"):
        writable_output(str(fifo))  # refused, never opened (it would block)
    kept = tmp_path / "kept.md"
    kept.write_text("hand-written", "utf-8")
    assert writable_output(str(kept)) == kept
    assert kept.read_text("utf-8") == "hand-written"  # tried, not truncated


def test_a_bad_date_is_refused_before_the_output_folder_is_made(tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet"
    result = run(
        None, "scenario", "post-holiday", "--applications", "2", "--date", "2026-05-03",
        "--output", str(folder / "s.json"),
    )  # fmt: skip
    assert_clean(result)
    assert result.exit_code == 2 and "--date" in result.output, result.output
    assert not (tmp_path / "not").exists()
