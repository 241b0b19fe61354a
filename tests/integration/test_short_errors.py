"""Short errors (issue 12): one line on stderr and a non-zero exit, from every command.

Each command is run as a real subprocess against an unmigrated SQLite file, a
PostgreSQL port nothing listens on, and malformed URLs. Passwords are never shown.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-pw"

# Every command that reads the database, with arguments that are otherwise valid.
DB_COMMANDS = [
    ["status", "--office", "KEI-OSAKA"],
    ["close"],  # (an --at on another day is refused before the database is read)
    ["dead-letters"],
    ["health"],
]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "retry_pipeline.cli", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize("args", DB_COMMANDS, ids=lambda a: a[0])
def test_unmigrated_database_says_run_db_upgrade(args: list[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    done = run(args, RETRY_PIPELINE_DATABASE_URL=url)
    assert done.returncode == 1
    assert "run `retry-pipeline db upgrade`" in one_line(done)


@pytest.mark.parametrize("args", [*DB_COMMANDS, ["db", "upgrade"]], ids=lambda a: a[0])
def test_unreachable_database_is_one_line_without_password(args: list[str]) -> None:
    url = f"postgresql+psycopg://retry:{SECRET}@127.0.0.1:{closed_port()}/retry"
    done = run(args, RETRY_PIPELINE_DATABASE_URL=url)
    assert done.returncode == 1
    line = one_line(done)
    assert "unreachable" in line and "retry:**@127.0.0.1" in line


@pytest.mark.parametrize(
    "args",
    [*DB_COMMANDS, ["plan", "--detected-at", "2026-11-27T08:36:00+09:00"], ["db", "upgrade"]],
    ids=lambda a: a[0],
)
def test_bad_broker_url_is_refused_by_every_command(args: list[str], tmp_path: Path) -> None:
    done = run(
        args,
        RETRY_PIPELINE_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}",
        RETRY_PIPELINE_BROKER_URL=f"redis//:{SECRET}@redis:6379/0",
    )
    assert done.returncode == 2
    assert "is not a broker URL" in one_line(done)


def test_bad_database_url_is_a_usage_error() -> None:
    done = run(["dead-letters"], RETRY_PIPELINE_DATABASE_URL=f"not a url {SECRET}")
    assert done.returncode == 2
    assert "DATABASE_URL is not a database URL" in one_line(done)


def test_unreadable_secret_file_is_one_line(tmp_path: Path) -> None:
    done = run(["dead-letters"], RETRY_PIPELINE_DATABASE_URL_FILE=str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "RETRY_PIPELINE_DATABASE_URL_FILE: cannot read" in one_line(done)


def test_database_url_from_a_file_is_used(tmp_path: Path) -> None:
    """Secrets as files: the URL comes from RETRY_PIPELINE_DATABASE_URL_FILE."""
    secret = tmp_path / "database_url"
    secret.write_text(f"sqlite:///{tmp_path / 'from-file.sqlite3'}\n")
    done = run(["db", "upgrade"], RETRY_PIPELINE_DATABASE_URL_FILE=str(secret))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "from-file.sqlite3").exists()
    assert run(["dead-letters"], RETRY_PIPELINE_DATABASE_URL_FILE=str(secret)).returncode == 0
