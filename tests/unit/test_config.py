"""Settings from ``RETRY_PIPELINE_*`` variables ("Calendar and defaults", R1, R2, R6, R7, R11)."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import pytest

from retry_pipeline.config import Settings
from retry_pipeline.errors import ConfigError


def test_defaults_follow_spec() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.opening == time(8, 30)  # 開局
    assert s.close == time(16, 0)  # D: default OSS close
    assert s.step_min == 10  # R6
    assert s.attempts_per_chain == 6  # R7
    assert s.next_day_attempts == 1  # R11
    assert s.extra_closures == frozenset()
    assert s.new_inspection_retry_from is None  # R1: new inspection not retried until set
    assert s.safety_validity_days == 15  # R2
    assert s.completion_validity_months == 9  # R2


def test_variables_without_the_prefix_are_ignored() -> None:
    s = Settings.from_env({"PATH": "/usr/bin", "CLOSE": "12:00", "RETRY_PIPELINEX": "1"})
    assert s == Settings()


@pytest.mark.parametrize(
    ("name", "raw", "attr", "value"),
    [
        ("OPENING", "09:00", "opening", time(9, 0)),
        ("OPENING", " 08:00 ", "opening", time(8, 0)),
        ("CLOSE", "12:00", "close", time(12, 0)),
        ("CLOSE", "17:30", "close", time(17, 30)),
        ("STEP_MIN", "15", "step_min", 15),
        ("STEP_MIN", "5", "step_min", 5),
        ("ATTEMPTS_PER_CHAIN", "3", "attempts_per_chain", 3),
        ("NEXT_DAY_ATTEMPTS", "2", "next_day_attempts", 2),
        ("SAFETY_VALIDITY_DAYS", "30", "safety_validity_days", 30),
        ("COMPLETION_VALIDITY_MONTHS", "6", "completion_validity_months", 6),
        ("EXTRA_CLOSURES", "2026-11-27", "extra_closures", frozenset({date(2026, 11, 27)})),
        (
            "EXTRA_CLOSURES",
            "2026-11-27, 2026-12-28,",
            "extra_closures",
            frozenset({date(2026, 11, 27), date(2026, 12, 28)}),
        ),
        ("EXTRA_CLOSURES", "", "extra_closures", frozenset()),
        ("NEW_INSPECTION_RETRY_FROM", "2026-12-01", "new_inspection_retry_from", date(2026, 12, 1)),
        ("NEW_INSPECTION_RETRY_FROM", "", "new_inspection_retry_from", None),
        (
            "DATABASE_URL",
            "postgresql+psycopg://u@db/x",
            "database_url",
            "postgresql+psycopg://u@db/x",
        ),
        ("BROKER_URL", "redis://cache:6379/3", "broker_url", "redis://cache:6379/3"),
    ],
)
def test_each_variable_is_parsed(name: str, raw: str, attr: str, value: object) -> None:
    s = Settings.from_env({f"RETRY_PIPELINE_{name}": raw})
    assert getattr(s, attr) == value
    # Only that one setting moved.
    others = {k: v for k, v in vars(Settings()).items() if k != attr}
    assert {k: v for k, v in vars(s).items() if k != attr} == others


def test_empty_urls_keep_defaults() -> None:
    s = Settings.from_env({"RETRY_PIPELINE_DATABASE_URL": "", "RETRY_PIPELINE_BROKER_URL": ""})
    assert s.database_url == Settings().database_url
    assert s.broker_url == Settings().broker_url


def test_several_variables_together() -> None:
    s = Settings.from_env(
        {
            "RETRY_PIPELINE_CLOSE": "12:00",
            "RETRY_PIPELINE_STEP_MIN": "15",
            "RETRY_PIPELINE_ATTEMPTS_PER_CHAIN": "3",
            "RETRY_PIPELINE_NEXT_DAY_ATTEMPTS": "2",
        }
    )
    assert (s.close, s.step_min, s.attempts_per_chain, s.next_day_attempts) == (
        time(12, 0),
        15,
        3,
        2,
    )
    assert s.opening == time(8, 30)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("OPENING", "25:00"),
        ("OPENING", "noon"),
        ("CLOSE", "16h"),
        ("CLOSE", "16:60"),
        ("STEP_MIN", "ten"),
        ("STEP_MIN", "10.5"),
        ("ATTEMPTS_PER_CHAIN", "six"),
        ("NEXT_DAY_ATTEMPTS", ""),
        ("SAFETY_VALIDITY_DAYS", "15d"),
        ("COMPLETION_VALIDITY_MONTHS", "9 months"),
        ("EXTRA_CLOSURES", "2026-11-31"),
        ("NEW_INSPECTION_RETRY_FROM", "2026/12/01"),
    ],
)
def test_bad_value_is_a_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({f"RETRY_PIPELINE_{name}": raw})
    message = str(info.value)
    assert f"RETRY_PIPELINE_{name}" in message
    assert repr(raw) in message


def test_bad_date_in_a_list_is_named() -> None:
    with pytest.raises(ConfigError, match="RETRY_PIPELINE_EXTRA_CLOSURES") as info:
        Settings.from_env({"RETRY_PIPELINE_EXTRA_CLOSURES": "2026-11-27,27/11/2026"})
    assert "27/11/2026" in str(info.value)


def test_time_with_utc_offset_is_a_config_error() -> None:
    # Opening/close are wall-clock times in Japan; an offset is a bad value, and it must
    # surface as ConfigError (not a TypeError from comparing aware and naive times).
    with pytest.raises(ConfigError, match="RETRY_PIPELINE_CLOSE"):
        Settings.from_env({"RETRY_PIPELINE_CLOSE": "16:00+09:00"})


@pytest.mark.parametrize(
    "name", ["RETRY_PIPELINE_CLOSING_TIME", "RETRY_PIPELINE_ATTEMPTS", "RETRY_PIPELINE_close"]
)
def test_unknown_variable_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown setting") as info:
        Settings.from_env({name: "1"})
    assert name in str(info.value)


def test_unknown_variable_is_refused_next_to_good_ones() -> None:
    with pytest.raises(ConfigError, match="RETRY_PIPELINE_STEPMIN"):
        Settings.from_env({"RETRY_PIPELINE_CLOSE": "12:00", "RETRY_PIPELINE_STEPMIN": "5"})


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RETRY_PIPELINE_CLOSE": "08:30"}, "CLOSE"),  # close == opening
        ({"RETRY_PIPELINE_CLOSE": "08:00"}, "CLOSE"),  # close before opening
        ({"RETRY_PIPELINE_OPENING": "16:00"}, "CLOSE"),
        ({"RETRY_PIPELINE_OPENING": "17:00", "RETRY_PIPELINE_CLOSE": "09:00"}, "CLOSE"),
        ({"RETRY_PIPELINE_STEP_MIN": "0"}, "STEP_MIN"),
        ({"RETRY_PIPELINE_STEP_MIN": "-10"}, "STEP_MIN"),
        ({"RETRY_PIPELINE_STEP_MIN": "7"}, "STEP_MIN"),  # 1440 / 7 is not whole
        ({"RETRY_PIPELINE_STEP_MIN": "1000"}, "STEP_MIN"),
        ({"RETRY_PIPELINE_ATTEMPTS_PER_CHAIN": "0"}, "ATTEMPTS_PER_CHAIN"),
        ({"RETRY_PIPELINE_ATTEMPTS_PER_CHAIN": "-1"}, "ATTEMPTS_PER_CHAIN"),
        ({"RETRY_PIPELINE_NEXT_DAY_ATTEMPTS": "0"}, "NEXT_DAY_ATTEMPTS"),
        ({"RETRY_PIPELINE_SAFETY_VALIDITY_DAYS": "0"}, "validity"),
        ({"RETRY_PIPELINE_COMPLETION_VALIDITY_MONTHS": "0"}, "validity"),
        ({"RETRY_PIPELINE_RESUME_TASK": ".leading.dot"}, "RESUME_TASK"),
        ({"RETRY_PIPELINE_AUTO_CORRECT_TASK": "exam auto"}, "AUTO_CORRECT_TASK"),
        ({"RETRY_PIPELINE_REPORT_RECEIVED_TASK": 'x"y'}, "REPORT_RECEIVED_TASK"),
        ({"RETRY_PIPELINE_RESUME_TASK": "審査.再開"}, "RESUME_TASK"),
        ({"RETRY_PIPELINE_RESUME_TASK": "a" * 201}, "RESUME_TASK"),
    ],
)
def test_invalid_combination_is_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_task_names_of_the_examination_side_are_accepted() -> None:
    env = {"RETRY_PIPELINE_RESUME_TASK": "exam_v2.resume-pre:review",
           "RETRY_PIPELINE_AUTO_CORRECT_TASK": "_private.auto"}  # fmt: skip
    settings = Settings.from_env(env)
    assert settings.resume_task == "exam_v2.resume-pre:review"
    assert settings.auto_correct_task == "_private.auto"


@pytest.mark.parametrize("step_min", [1, 5, 10, 15, 30, 60, 90, 1440])
def test_step_dividing_a_day_is_accepted(step_min: int) -> None:
    assert Settings.from_env({"RETRY_PIPELINE_STEP_MIN": str(step_min)}).step_min == step_min


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError):
        Settings(attempts_per_chain=0)
    with pytest.raises(ConfigError):
        Settings(opening=time(12, 0), close=time(12, 0))
    with pytest.raises(ConfigError):
        Settings(step_min=11)


# -- issue 13: secrets as files, the registry URL, signing, masked URLs ----------------


def test_secret_settings_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql+psycopg://retry:pw@db/retry\n")
    (tmp_path / "broker").write_text("redis://pipeline:pw@redis:6379/0")
    s = Settings.from_env(
        {
            "RETRY_PIPELINE_DATABASE_URL_FILE": str(tmp_path / "db"),
            "RETRY_PIPELINE_BROKER_URL_FILE": str(tmp_path / "broker"),
        }
    )
    assert s.database_url == "postgresql+psycopg://retry:pw@db/retry"
    assert s.broker_url == "redis://pipeline:pw@redis:6379/0"
    assert s.registry_database_url == s.database_url  # the registry defaults to it


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RETRY_PIPELINE_DATABASE_URL": "sqlite://", "RETRY_PIPELINE_DATABASE_URL_FILE": "x"},
            "not both",
        ),
        ({"RETRY_PIPELINE_BROKER_URL_FILE": "/nonexistent/broker"}, "cannot read"),
        ({"RETRY_PIPELINE_QUEUE_FILE": "/tmp/x"}, "unknown setting"),  # only secrets have one
        ({"RETRY_PIPELINE_SECURITY_KEY": "k.pem"}, "go together"),
    ],
)
def test_bad_secret_and_signing_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_registry_url_and_signing_settings() -> None:
    s = Settings.from_env(
        {
            "RETRY_PIPELINE_REGISTRY_URL": "postgresql+psycopg://ro@kmt/keimotas",
            "RETRY_PIPELINE_SECURITY_KEY": "p.key",
            "RETRY_PIPELINE_SECURITY_CERTIFICATE": "p.pem",
            "RETRY_PIPELINE_SECURITY_CERT_STORE": "trusted",
        }
    )
    assert s.registry_database_url == "postgresql+psycopg://ro@kmt/keimotas"
    assert s.signing
    assert not Settings().signing


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@redis:6379/0", "redis://:**@redis:6379/0"),
        ("redis://examination:secret@h:6380/0", "redis://examination:**@h:6380/0"),
        (
            "postgresql+psycopg://retry:secret@pg:5432/retry",
            "postgresql+psycopg://retry:**@pg:5432/retry",
        ),
        ("sqlite:///var/x.sqlite3", "sqlite:///var/x.sqlite3"),
    ],
)
def test_urls_are_masked(url: str, shown: str) -> None:
    from retry_pipeline.redact import mask_url

    assert mask_url(url) == shown
    assert "secret" not in mask_url(url)


def test_the_relay_cap_leaves_room_for_a_real_send_after_the_booked_one() -> None:
    """The deciding transaction books the first send; a cap of 1 would give up on an
    outcome whose booked send never happened (a worker killed inside it)."""
    with pytest.raises(ConfigError, match="RELAY_MAX_SENDS must be >= 2"):
        Settings.from_env({"RETRY_PIPELINE_RELAY_MAX_SENDS": "1"})
    assert Settings.from_env({"RETRY_PIPELINE_RELAY_MAX_SENDS": "2"}).relay_max_sends == 2
