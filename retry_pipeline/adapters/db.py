"""Engines and sessions; nothing is created at import time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Engine,
    Integer,
    String,
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from retry_pipeline.config import Settings

LIBPQ_DRIVERS = ("psycopg", "psycopg2")
KEEPALIVE_IDLE_S = 30  # a dead peer is noticed in about a minute, not after hours
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3
CONNECT_TIMEOUT_S = 10


def postgres_connect_args(settings: Settings) -> dict[str, Any]:
    """libpq options of every PostgreSQL connection: session timeouts and TCP keepalives.

    A lock wait longer than ``lock_timeout`` fails that statement (its batch is retried)
    instead of stalling a worker; a session idle in a transaction is ended by the server.
    """
    options = (
        f"-c lock_timeout={settings.db_lock_timeout_ms}"
        f" -c statement_timeout={settings.db_statement_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}"
    )
    return {
        "options": options,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
        "connect_timeout": CONNECT_TIMEOUT_S,
    }


def make_engine(
    url: str, *, write_lock: bool = True, settings: Settings | None = None, **kw: Any
) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and write-locking transactions.

    ``write_lock=False`` (SQLite only) begins transactions lazily: for read-only
    engines that must not wait behind a writer. PostgreSQL over libpq gets the
    timeouts of ``settings`` (default: the defaults) and TCP keepalives.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kw.setdefault("pool_pre_ping", True)
        if parsed.get_driver_name() in LIBPQ_DRIVERS:
            connect_args = postgres_connect_args(settings or Settings())
            connect_args.update(kw.pop("connect_args", {}))
            kw["connect_args"] = connect_args
        return create_engine(url, **kw)
    engine = create_engine(url, connect_args={"timeout": 30}, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if parsed.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash (every fault we inject);
            # only a power cut may lose the last commits. PostgreSQL for production.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: two workers never deadlock on upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write_lock else "BEGIN")

    return engine


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory; objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def one_of(session: Session, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN (values)`` for a batch of ids. PostgreSQL: ``column IN (SELECT
    unnest(:array))``, one parameter, so the statement's text is the same for every batch
    (an IN list of 500 is compiled by SQLAlchemy and parsed by psycopg anew each time: a
    slot spent more on that than on the statements). The array's element type has no
    length: a too-long id is compared whole, never cut to the column's length.

    Not ``column = ANY(:array)``: psycopg prepares a statement run five times, and
    PostgreSQL then keeps a generic plan made for the table as it was. Planned while the
    table was small (the outbox before a release) that is a sequential scan testing
    every row against the whole array, 500 comparisons a row: the release's outbox
    updates grew from 10 to 130 ms a batch as the table filled. ``IN (SELECT unnest())``
    is a semi-join: the index when the plan knows the table is large, a hash of the
    batch otherwise (one pass over the table a batch, until an ANALYZE replans it, not a
    pass times the batch). Elsewhere (SQLite): a plain IN."""
    clause: ColumnElement[bool]
    if session.get_bind().dialect.name != "postgresql":
        clause = column.in_(values)
        return clause
    element = column.type
    if isinstance(element, String):
        element = String()
    elif isinstance(element, Integer):
        element = BigInteger()
    clause = column.in_(select(func.unnest(literal(list(values), ARRAY(element)))))
    return clause


def _bound(
    rows: Sequence[dict[str, Any]], decorated: list[tuple[str, TypeDecorator[Any]]], dialect: Any
) -> list[dict[str, Any]]:
    """The rows with each decorated column's value through its ``process_bind_param``
    (and an instant on to its JSON text), once per value object: a batch's rows share
    their few instants (the slot, now), and a pendulum time's conversion to UTC is
    Python. By identity, not equality: two datetimes of one zone that differ only in
    ``fold`` are equal but not one instant."""
    done: dict[tuple[str, int], Any] = {}

    def bound(name: str, kind: TypeDecorator[Any], value: Any) -> Any:
        key = (name, id(value))
        if key not in done:
            converted = kind.process_bind_param(value, dialect)
            done[key] = _json_value(converted) if isinstance(converted, date) else converted
        return done[key]

    return [{**row, **{n: bound(n, k, row[n]) for n, k in decorated}} for row in rows]


def insert_many(
    session: Session,
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    returning: str | None = None,
    same: dict[str, Any] | None = None,
) -> dict[Any, Any]:
    """INSERT ``rows`` (dicts over the same columns) in one statement. ``same``: the
    columns every row shares, with their values (sent once, not once a row). With
    ``returning`` (a unique column of the rows), ``{that value: the new row's id}``.

    PostgreSQL: the batch travels as one JSON document, ``INSERT .. SELECT .. FROM
    json_populate_recordset(..)``: a short statement parsed once whatever the number of
    rows (SQLAlchemy's multi-VALUES form is a new, longer text for every batch), and one
    parameter that ``json.dumps`` writes in C (psycopg dumps arrays element by element in
    Python: for a slot's history and outbox rows, more time than the database took); the
    shared values as a one-row JSON object beside it. Each value goes through its
    column's input conversion, as in a plain INSERT: a too-long string is refused, not
    cut. Elsewhere (SQLite): SQLAlchemy's own bulk insert.
    """
    if not rows:
        return {}
    same = same or {}
    if same.keys() & rows[0].keys():
        raise ValueError(f"columns both shared and per row: {sorted(same.keys() & rows[0].keys())}")
    dialect = session.get_bind().dialect
    table = model.__table__
    key = table.c[returning] if returning else None
    if dialect.name != "postgresql":
        stmt = insert(model)
        full = [{**row, **same} for row in rows] if same else list(rows)
        if key is None:
            session.execute(stmt, full)
            return {}
        stmt = stmt.returning(key, table.c.id, sort_by_parameter_order=True)
        return {k: v for k, v in session.execute(stmt, full)}
    own = [table.c[name] for name in rows[0]]
    shared = [table.c[name] for name in same]
    names = ", ".join(c.name for c in own + shared)
    # A JSON column's None arrives as SQL NULL; SQLAlchemy's JSON stores JSON null.
    values = ", ".join(
        f"coalesce({alias}.{c.name}, 'null'::json)" if isinstance(c.type, JSON) else
        f"{alias}.{c.name}"
        for alias, columns in (("r", own), ("s", shared)) for c in columns
    )  # fmt: skip
    sql = (
        f"INSERT INTO {table.name} ({names}) SELECT {values} "
        f"FROM json_populate_recordset(NULL::{table.name}, CAST(:doc AS json)) AS r"
    )
    params = {"doc": _json_text(_as_stored(own, rows, dialect))}
    if shared:
        sql += f" CROSS JOIN json_populate_record(NULL::{table.name}, CAST(:same AS json)) AS s"
        params["same"] = _json_text(_as_stored(shared, [same], dialect)[0])
    if key is None:
        session.execute(text(sql), params)
        return {}
    sql += f" RETURNING {key.name}, id"
    return {k: v for k, v in session.execute(text(sql), params)}


def _as_stored(
    columns: list[Any], rows: Sequence[dict[str, Any]], dialect: Any
) -> Sequence[dict[str, Any]]:
    """``rows`` with each decorated column's value through its type (``_bound``)."""
    decorated = [(c.name, c.type) for c in columns if isinstance(c.type, TypeDecorator)]
    return _bound(rows, decorated, dialect) if decorated else rows


def _json_text(value: Any) -> str:
    return json.dumps(value, default=_json_value, ensure_ascii=False, allow_nan=False)


def _json_value(value: Any) -> str:
    """Instants and dates as PostgreSQL reads them (ISO 8601; naive UTC from UTCDateTime)."""
    if isinstance(value, date):  # datetime is a date too
        return value.isoformat()
    raise TypeError(f"insert_many cannot send a {type(value).__name__}")
