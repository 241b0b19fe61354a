"""Issue 12, findings 4 and 7: dead letters that always land, capped, with a retention.

On SQLite and PostgreSQL: any body (NUL bytes, invalid UTF-8, lone surrogates) is
stored; only its first 64 KiB is kept, with its whole size and SHA-256; old letters
are purged by ``retry-pipeline dead-letters purge --older-than 90d`` and by the daily
beat entry.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from retry_pipeline import names
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.bootstrap import bootstrap
from retry_pipeline.cli import main
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.model import LETTER_HEAD_BYTES
from retry_pipeline.service.letters import raw_text

NOW = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)


def body_of(store: RetryStore, letter_id: int) -> bytes:
    with store.engine.connect() as conn:
        value = conn.execute(
            text("SELECT body FROM dead_letter WHERE id = :i"), {"i": letter_id}
        ).scalar_one()
    return bytes(value)


def test_a_body_with_nul_bytes_and_invalid_utf8_lands(store: RetryStore) -> None:
    body = b"\x80\x04\x95pickle\x00\x00\xff\xfe" + "é".encode()
    with store.unit() as u:
        letter_id = u.dead_letters.add("(rejected)", "pickle\x00refused", body, NOW)
    with store.unit() as u:
        (letter,) = u.dead_letters.newest(1)
    assert letter.id == letter_id
    assert body_of(store, letter_id) == body  # every byte kept
    assert "\x00" not in letter.payload and "\\x00" in letter.payload
    assert letter.payload.endswith("é")
    assert letter.size == len(body)
    assert letter.sha256 == hashlib.sha256(body).hexdigest()
    assert letter.reason == "pickle\\x00refused"


def test_text_with_nul_and_lone_surrogates_lands(store: RetryStore) -> None:
    payload = "report\x00 with \ud800 a lone surrogate"
    with store.unit() as u:
        letter_id = u.dead_letters.add("retry_pipeline.report_missing", "bad", payload, NOW)
    with store.unit() as u:
        (letter,) = u.dead_letters.newest(1)
    assert letter.id == letter_id
    assert letter.payload.startswith("report\\x00 with ")


def test_a_10_mb_body_keeps_its_first_64_kib_its_size_and_hash(store: RetryStore) -> None:
    body = ("x" * 1023 + "\n").encode() * (10 * 1024)
    with store.unit() as u:
        letter_id = u.dead_letters.add("retry_pipeline.report_missing", "too big", body, NOW)
    with store.unit() as u:
        (letter,) = u.dead_letters.newest(1)
    assert body_of(store, letter_id) == body[:LETTER_HEAD_BYTES]
    assert len(letter.payload) == LETTER_HEAD_BYTES
    assert letter.size == len(body) == 10 * 1024 * 1024
    assert letter.sha256 == hashlib.sha256(body).hexdigest()
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT length(payload) FROM dead_letter")).scalar_one()
    assert stored == LETTER_HEAD_BYTES


def test_a_100000_item_batch_is_not_stored_whole(store: RetryStore, db_url: str) -> None:
    batch = [{"application": f"OSS-{n}", "office": "OSK01"} for n in range(100_000)]
    raw = raw_text(batch)
    pipeline = bootstrap(Settings(database_url=db_url), None, clock=FixedClock(NOW),
                         dispatcher=object(), gateway=object())  # type: ignore[arg-type]  # fmt: skip
    pipeline.keep_dead_letter(names.REPORT_MISSING_BATCH, "a batch is a list of 1..500", raw)
    with store.unit() as u:
        (letter,) = u.dead_letters.newest(1)
    assert len(letter.payload.encode()) <= LETTER_HEAD_BYTES
    assert letter.size == len(raw.encode())
    assert letter.sha256 == hashlib.sha256(raw.encode()).hexdigest()


def add_aged(store: RetryStore, ages_days: list[int], now: datetime) -> dict[int, int]:
    ids = {}
    with store.unit() as u:
        for age in ages_days:
            ids[age] = u.dead_letters.add("t", f"aged {age}", b"x", now - timedelta(days=age))
    return ids


def test_purge_cli_deletes_letters_older_than_the_age(store: RetryStore, db_url: str) -> None:
    now = datetime.now(UTC)
    ids = add_aged(store, [200, 91, 89, 1], now)
    result = CliRunner().invoke(
        main,
        ["dead-letters", "purge", "--older-than", "90d"],
        env={"RETRY_PIPELINE_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"purged": 2, "older_than_s": 90 * 86400}
    with store.unit() as u:
        left = {d.id for d in u.dead_letters.newest(100)}
    assert left == {ids[89], ids[1]}
    # The listing still works beside the new subcommand.
    listed = CliRunner().invoke(
        main, ["dead-letters", "--json"], env={"RETRY_PIPELINE_DATABASE_URL": db_url}
    )
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["id"] for r in rows} == left
    assert all(r["size"] == 1 and len(r["sha256"]) == 64 for r in rows)


@pytest.mark.parametrize("age", ["90", "ninety days", "0d", "-3d", "5y"])
def test_purge_cli_refuses_a_bad_age(age: str, db_url: str) -> None:
    result = CliRunner().invoke(
        main,
        ["dead-letters", "purge", "--older-than", age],
        env={"RETRY_PIPELINE_DATABASE_URL": db_url},
    )
    assert result.exit_code == 2
    assert "90d" in result.output


def test_the_daily_purge_keeps_the_retention(store: RetryStore, db_url: str) -> None:
    ids = add_aged(store, [120, 31, 29], NOW)
    settings = Settings(database_url=db_url, dead_letter_retention_days=30)
    pipeline = bootstrap(settings, None, clock=FixedClock(NOW),
                         dispatcher=object(), gateway=object())  # type: ignore[arg-type]  # fmt: skip
    assert pipeline.purge_dead_letters(timedelta(days=settings.dead_letter_retention_days)) == 2
    with store.unit() as u:
        assert {d.id for d in u.dead_letters.newest(100)} == {ids[29]}


def test_beat_runs_the_purge_daily() -> None:
    # In a fresh process: the tasks module reads its settings once, at import.
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    probe = (
        "import json, retry_pipeline.tasks as t\n"
        "e = t.app.conf.beat_schedule['dead-letters-purge']\n"
        "s = e['schedule']\n"
        "print(json.dumps([e['task'], t.purge_dead_letters.name, type(s).__name__,"
        " len(s.hour), len(s.minute), len(s.day_of_week)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    task, name, kind, hours, minutes, days = json.loads(out.stdout.strip().splitlines()[-1])
    assert task == names.PURGE_DEAD_LETTERS == name
    assert kind == "crontab"
    assert (hours, minutes, days) == (1, 1, 7)  # once a day, every day


def test_beat_on_a_scaled_clock_has_no_purge_entry(tmp_path: Path) -> None:
    # A real-time entry beside the grid on a simulation's clock would starve the grid.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    probe = "import retry_pipeline.tasks as t; print(sorted(t.app.conf.beat_schedule))"
    entries = {}
    for case, extra in {
        "real": {},
        "scaled": {"RETRY_PIPELINE_CLOCK_FILE": str(tmp_path / "c")},
    }.items():
        out = subprocess.run(
            [sys.executable, "-c", probe], env={**env, **extra}, capture_output=True,
            text=True, timeout=60, check=True,
        )  # fmt: skip
        entries[case] = out.stdout.strip()
    assert entries["real"] == "['dead-letters-purge', 'grid-tick']"
    assert entries["scaled"] == "['grid-tick']"
