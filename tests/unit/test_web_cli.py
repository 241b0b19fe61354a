"""``retry-pipeline user ...`` and ``retry-pipeline web`` from the command line; JSON logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import UserRow
from retry_pipeline.cli import main
from retry_pipeline.logs import JsonFormatter, bind, task_fields


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'users.sqlite3'}"
    upgrade(url)
    return {"RETRY_PIPELINE_DATABASE_URL": url}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_user_add_list_passwd_remove(env: dict[str, str]) -> None:
    code, out, _ = run(
        env, "user", "add", "ops", "--office", "HQ", "--operator", "--password-stdin",
        stdin="operator-pass-1\n",
    )  # fmt: skip
    assert code == 0 and "ops" in out
    code, _, _ = run(
        env, "user", "add", "osaka1", "--office", "KEI-OSAKA", "--password-stdin",
        stdin="office-pass-1\n",
    )  # fmt: skip
    assert code == 0
    code, out, _ = run(env, "user", "list")
    assert code == 0
    assert out.splitlines() == ["ops\tHQ\toperator", "osaka1\tKEI-OSAKA\toffice"]
    assert "operator-pass-1" not in out and "argon2" not in out
    engine = create_engine(env["RETRY_PIPELINE_DATABASE_URL"])
    with Session(engine) as s:
        before = s.scalars(select(UserRow).where(UserRow.username == "osaka1")).one()
    assert before.password_hash.startswith("$argon2id$")
    code, _, _ = run(env, "user", "passwd", "osaka1", "--password-stdin", stdin="new-pass-22\n")
    assert code == 0
    with Session(engine) as s:
        after = s.scalars(select(UserRow).where(UserRow.username == "osaka1")).one()
    assert after.password_hash != before.password_hash
    assert after.session_version == before.session_version + 1
    code, _, _ = run(env, "user", "remove", "osaka1")
    assert code == 0
    code, out, _ = run(env, "user", "list")
    assert out.splitlines() == ["ops\tHQ\toperator"]
    engine.dispose()


@pytest.mark.parametrize(
    "args,stdin,needle",
    [
        (["user", "add", "a", "--office", "X", "--password-stdin"], "short\n", "at least 8"),
        (["user", "add", "a", "--office", "X"], "long-enough-pass\n", "--password-stdin"),
        (["user", "add", "a b", "--office", "X", "--password-stdin"], "long-enough-pass\n", "name"),
        (["user", "add", "a", "--office", "X", "--password-stdin"], "", "no password"),
        (["user", "remove", "nobody"], None, "no user nobody"),
        (["user", "passwd", "nobody", "--password-stdin"], "long-enough-pass\n", "no user"),
    ],
)
def test_bad_user_input_exits_2_with_one_line(
    env: dict[str, str], args: list[str], stdin: str | None, needle: str
) -> None:
    code, out, err = run(env, *args, stdin=stdin)
    assert code == 2
    assert needle in err
    assert "long-enough-pass" not in out + err


def test_a_taken_user_name_is_refused(env: dict[str, str]) -> None:
    add = ["user", "add", "dup", "--office", "X", "--password-stdin"]
    assert run(env, *add, stdin="long-enough-pass\n")[0] == 0
    code, _, err = run(env, *add, stdin="long-enough-pass\n")
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize("secret", [None, "", "too-short-secret"])
def test_web_refuses_to_start_without_a_long_secret(
    env: dict[str, str], secret: str | None
) -> None:
    environ = dict(env)
    if secret is not None:
        environ["RETRY_PIPELINE_WEB_SECRET"] = secret
    code, _, err = run(environ, "web", "--port", "1")
    assert code == 2
    assert "RETRY_PIPELINE_WEB_SECRET" in err and "32" in err


def test_json_log_lines_carry_application_and_chain_id() -> None:
    formatter = JsonFormatter()
    logger = logging.getLogger("test.json")
    record = logger.makeRecord("test.json", logging.INFO, __file__, 1, "plain %s", ("x",), None)
    line = json.loads(formatter.format(record))
    assert line["message"] == "plain x" and "application" not in line
    with bind(application="OSAKA-1", chain_id="c" * 32):
        bound = json.loads(formatter.format(record))
    assert bound["application"] == "OSAKA-1" and bound["chain_id"] == "c" * 32
    extra = logger.makeRecord(
        "test.json", logging.INFO, __file__, 1, "m", (), None,
        extra={"application": "KOBE-2", "chain_id": "d" * 32},
    )  # fmt: skip
    assert json.loads(formatter.format(extra))["application"] == "KOBE-2"
    found = logger.makeRecord(
        "test.json", logging.ERROR, __file__, 1, "could not deliver %s:resumed", ("e" * 32,), None
    )
    assert json.loads(formatter.format(found))["chain_id"] == "e" * 32


def test_task_arguments_give_the_log_context() -> None:
    report = {"application": "OSAKA-9", "office": "KEI-OSAKA"}
    assert task_fields((report,), {}) == {"application": "OSAKA-9"}
    assert task_fields(("a" * 32, 1, "2026-11-27T09:10:00+09:00"), {}) == {"chain_id": "a" * 32}
    assert task_fields((), {}) == {}


def test_worker_and_beat_loggers_switch_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.signals import after_setup_logger, after_setup_task_logger

    import retry_pipeline.tasks  # noqa: F401  (connects the signals, as the worker does)

    monkeypatch.setenv("RETRY_PIPELINE_LOG_FORMAT", "json")
    for signal in (after_setup_logger, after_setup_task_logger):
        logger = logging.getLogger(f"test.celery.{signal.name}")
        handler = logging.StreamHandler()
        logger.addHandler(handler)
        try:
            signal.send(sender=None, logger=logger, loglevel=logging.INFO, logfile=None,
                        format="", colorize=False)  # fmt: skip
            assert isinstance(handler.formatter, JsonFormatter)
        finally:
            logger.removeHandler(handler)


def test_an_unmigrated_database_is_one_clear_line(tmp_path: Path) -> None:
    env = {"RETRY_PIPELINE_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}
    code, out, err = run(env, "user", "list")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "db upgrade" in err and "Traceback" not in err
