"""A private database for one run of the simulation, the fault matrix or the bench.

``sqlite`` is a file in the run's workdir. ``postgresql`` is a fresh database
``<prefix><random>`` created on the admin URL (``TEST_POSTGRES_URL``, else the local
server's ``test`` database) and dropped after, even with connections still open
(``WITH (FORCE)``). A ``postgresql...`` URL is taken as the admin URL instead: the
run never writes into the database it names, only into one it creates beside it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ADMIN_URL_ENV = "TEST_POSTGRES_URL"
CHOICES = ("sqlite", "postgresql")


def admin_url_of(database: str) -> str | None:
    """The server a ``database`` choice creates its database on (None: SQLite).

    Refuses what is neither ``sqlite``, ``postgresql`` nor a PostgreSQL URL.
    """
    if database == "sqlite":
        return None
    if database == "postgresql":
        return os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)
    if database.startswith("postgresql"):
        try:
            make_url(database)
        except Exception as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        return database
    raise ValueError(f"database must be sqlite, postgresql or a postgresql URL, not {database!r}")


def backend_of(database: str) -> str:
    """``sqlite`` or ``postgresql``, for a choice or a URL."""
    return "sqlite" if admin_url_of(database) is None else "postgresql"


@contextmanager
def private_database(
    database: str, workdir: Path, prefix: str = "rp_sim_", filename: str = "simulation.sqlite3"
) -> Iterator[str]:
    """The URL of a fresh database for this run, removed after (see the module)."""
    admin_url = admin_url_of(database)
    if admin_url is None:
        for stale in workdir.glob(f"{filename}*"):
            stale.unlink()
        yield f"sqlite:///{workdir / filename}"
        return
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
