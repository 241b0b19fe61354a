"""The database choice of a simulation run (pure), and the matrix's generated file."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.databases import DEFAULT_ADMIN_URL, admin_url_of, backend_of, private_database
from simulation.matrix import HAND_WRITTEN, keep_hand_written


def test_sqlite_is_a_file_and_postgresql_a_database_on_the_admin_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_POSTGRES_URL", raising=False)
    assert admin_url_of("sqlite") is None
    assert admin_url_of("postgresql") == DEFAULT_ADMIN_URL
    monkeypatch.setenv("TEST_POSTGRES_URL", "postgresql+psycopg://u@db:5433/admin")
    assert admin_url_of("postgresql") == "postgresql+psycopg://u@db:5433/admin"
    url = "postgresql+psycopg://other@10.0.0.9/x"
    assert admin_url_of(url) == url  # the server to create the private database on
    assert (backend_of("sqlite"), backend_of("postgresql"), backend_of(url)) == (
        "sqlite",
        "postgresql",
        "postgresql",
    )


@pytest.mark.parametrize("choice", ["", "mysql", "sqlite:///x.db", "postgres"])
def test_other_choices_are_refused(choice: str) -> None:
    with pytest.raises(ValueError, match="sqlite, postgresql or a postgresql URL"):
        admin_url_of(choice)


def test_a_sqlite_run_starts_from_a_fresh_file(tmp_path: Path) -> None:
    (tmp_path / "simulation.sqlite3-wal").write_text("stale")
    with private_database("sqlite", tmp_path) as url:
        assert url == f"sqlite:///{tmp_path / 'simulation.sqlite3'}"
        assert not list(tmp_path.iterdir())


def test_regenerating_keeps_the_hand_written_part() -> None:
    previous = f"# old table\n| a |\n\n{HAND_WRITTEN}\n\n## By hand\n\nkept\n"
    assert keep_hand_written("# new table\n", previous) == (
        f"# new table\n\n{HAND_WRITTEN}\n\n## By hand\n\nkept\n"
    )
    assert keep_hand_written("# new table\n", "# no marker\n") == "# new table\n"
    assert keep_hand_written("# new table\n", None) == "# new table\n"
