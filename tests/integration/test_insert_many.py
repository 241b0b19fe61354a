"""``insert_many``: one INSERT for a batch of rows, one JSON document on PostgreSQL; and
``one_of``, the batch's ``IN`` (one array parameter on PostgreSQL).

Every kind of column the history and the outbox hold goes in and comes back as it
was: NULLs (also a whole column of them), JSON lists (empty, Japanese), aware
datetimes stored as UTC, long text; ``returning`` maps each row to its new id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Text, cast, select, text
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import insert_many, make_engine, one_of
from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.adapters.orm import HistoryRow, OutboxRow
from retry_pipeline.adapters.outbox import SqlOutbox
from tests.conftest import _reset_postgres

JST = timezone(timedelta(hours=9))
AT = datetime(2026, 11, 30, 8, 30, tzinfo=JST)


def _history(i: int) -> dict[str, object]:
    return {
        "chain_id": f"c{i}", "application": f"OSS-{i}", "office": "関東", "event": "attempt",
        "attempt_no": None if i % 2 else i, "slot": None if i % 3 == 0 else AT,
        "missing": ["safety", "保適証"] if i % 2 else [], "detail": "x" * 400 + "'; --",
        "recorded_at": AT + timedelta(seconds=i), "found": [], "late_s": None, "node": None,
    }  # fmt: skip


def test_rows_come_back_as_they_went_in(db_url: str) -> None:
    engine = make_engine(db_url)
    rows = [_history(i) for i in range(1, 301)]
    with Session(engine) as session, session.begin():
        assert insert_many(session, HistoryRow, rows) == {}
    with Session(engine) as session:
        stored = list(session.scalars(select(HistoryRow).order_by(HistoryRow.id)))
    engine.dispose()
    assert len(stored) == 300
    for row, want in zip(stored, rows, strict=True):
        got = {k: getattr(row, k) for k in want}
        assert got == want  # aware datetimes compare by instant
        assert row.recorded_at.tzinfo is UTC


def test_shared_and_equal_instants_are_each_stored_as_their_own(db_url: str) -> None:
    """The rows' datetimes are converted once per object (a batch shares its slot):
    one object in many rows, and equal-looking ones that are not one instant (the
    repeated hour of a DST zone, ``fold``), each stored as the instant it is."""
    ny = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=ny)
    second = first.replace(fold=1)  # equal to ``first`` in Python, an hour later
    times = [AT, AT, first, second, AT + timedelta(0), first]
    rows = [{**_history(i), "recorded_at": at} for i, at in enumerate(times, start=1)]
    engine = make_engine(db_url)
    with Session(engine) as session, session.begin():
        insert_many(session, HistoryRow, rows)
    with Session(engine) as session:
        stored = list(session.scalars(select(HistoryRow.recorded_at).order_by(HistoryRow.id)))
    engine.dispose()
    assert [t.timestamp() for t in stored] == [t.timestamp() for t in times]
    assert stored[3] - stored[2] == timedelta(hours=1)


def test_returning_maps_each_row_to_its_id(db_url: str) -> None:
    engine = make_engine(db_url)
    rows = [
        {"chain_id": f"k{i}", "idempotency_key": f"k{i}:resumed", "application": f"A-{i}",
         "office": "O1", "outcome": "resumed", "missing": [], "decided_at": AT,
         "created_at": AT, "sent_at": None, "send_count": 0}
        for i in range(50)
    ]  # fmt: skip
    with Session(engine) as session, session.begin():
        ids = insert_many(session, OutboxRow, rows, returning="chain_id")
    with Session(engine) as session:
        stored = {k: v for k, v in session.execute(select(OutboxRow.chain_id, OutboxRow.id))}
    assert ids == stored and len(ids) == 50
    with Session(engine) as session, pytest.raises(IntegrityError), session.begin():
        insert_many(session, OutboxRow, rows[:1], returning="chain_id")  # unique chain_id
    engine.dispose()


SHARED = ("office", "detail", "recorded_at", "missing", "late_s")  # str, datetime, JSON, NULL


def test_shared_values_are_stored_in_every_row(db_url: str) -> None:
    """``same``: columns every row shares, sent once; each row comes back with them, as
    if every row had carried them (the JSON list, the instant, a NULL among them)."""
    engine = make_engine(db_url)
    shared = {name: _history(3)[name] for name in SHARED}
    rows = [{k: v for k, v in _history(i).items() if k not in shared} for i in range(1, 41)]
    with Session(engine) as session, session.begin():
        assert insert_many(session, HistoryRow, rows, same=shared) == {}
    with Session(engine) as session:
        stored = list(session.scalars(select(HistoryRow).order_by(HistoryRow.id)))
    engine.dispose()
    assert len(stored) == 40
    for row, own in zip(stored, rows, strict=True):
        assert {k: getattr(row, k) for k in own} == own
        assert {k: getattr(row, k) for k in shared} == shared


def test_shared_values_with_returning(db_url: str) -> None:
    engine = make_engine(db_url)
    rows = [
        {"chain_id": f"s{i}", "idempotency_key": f"s{i}:resumed", "application": f"A-{i}",
         "office": "O1", "outcome": "resumed", "missing": [], "decided_at": AT}
        for i in range(30)
    ]  # fmt: skip
    same = {"created_at": AT, "sent_at": AT, "send_count": 1, "next_send_at": None}
    with Session(engine) as session, session.begin():
        ids = insert_many(session, OutboxRow, rows, returning="chain_id", same=same)
    with Session(engine) as session:
        stored = session.execute(
            select(OutboxRow.chain_id, OutboxRow.id, OutboxRow.send_count, OutboxRow.sent_at)
        ).all()
    engine.dispose()
    assert ids == {c: i for c, i, _, _ in stored} and len(ids) == 30
    assert {(n, sent) for _, _, n, sent in stored} == {(1, AT)}


def test_a_column_both_shared_and_per_row_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    with Session(engine) as session, pytest.raises(ValueError, match="office"):
        insert_many(session, HistoryRow, [_history(1)], same={"office": "O2"})
    engine.dispose()


@pytest.mark.postgres
def test_a_shared_value_too_long_is_refused_not_cut(postgres_server_url: str) -> None:
    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    engine = make_engine(postgres_server_url)
    row = {k: v for k, v in _history(1).items() if k != "node"}
    with Session(engine) as session, pytest.raises(DataError), session.begin():
        insert_many(session, HistoryRow, [row], same={"node": "n" * 200})  # VARCHAR(128)
    engine.dispose()


@pytest.mark.parametrize("key", ["k1:auto_corrected", "k2:resumed", "k1", "k1:resumed "])
def test_an_outcome_whose_key_is_not_its_chains_is_refused(db_url: str, key: str) -> None:
    """The key has no index; ``confirm`` finds a row through the chain_id the key begins
    with, so the outbox's check refuses any other key (migration 0012)."""
    engine = make_engine(db_url)
    row = {"chain_id": "k1", "idempotency_key": key, "application": "A-1", "office": "O1",
           "outcome": "resumed", "missing": [], "decided_at": AT, "created_at": AT,
           "sent_at": None, "send_count": 0}  # fmt: skip
    with Session(engine) as session, pytest.raises(IntegrityError), session.begin():
        insert_many(session, OutboxRow, [row], returning="chain_id")
    with Session(engine) as session, session.begin():
        assert insert_many(session, OutboxRow, [{**row, "idempotency_key": "k1:resumed"}]) == {}
    engine.dispose()


def test_nothing_to_insert(db_url: str) -> None:
    engine = make_engine(db_url)
    with Session(engine) as session, session.begin():
        assert insert_many(session, HistoryRow, []) == {}
    engine.dispose()


@pytest.mark.postgres
def test_a_value_too_long_for_its_column_is_refused_not_cut(postgres_server_url: str) -> None:
    """Each value goes through its column's own input conversion: the INSERT refuses a
    too-long value as a plain INSERT does (an explicit CAST to VARCHAR(128) would cut it)."""
    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    engine = make_engine(postgres_server_url)
    row = {**_history(1), "node": "n" * 200}  # node is VARCHAR(128)
    with Session(engine) as session, pytest.raises(DataError), session.begin():
        insert_many(session, HistoryRow, [row])
    with Session(engine) as session:
        assert session.scalars(select(HistoryRow)).first() is None
    engine.dispose()


def test_json_values_are_stored_as_sqlalchemy_stores_them(db_url: str) -> None:
    """A JSON column's None is JSON null (not SQL NULL), nested values and text that
    JSON escapes (quotes, backslashes, newlines, Japanese) come back as they went in,
    exactly as SQLAlchemy's own single-row INSERT stores them."""
    engine = make_engine(db_url)
    odd = ['"quoted"', "back\\slash", "line\nbreak", "保適証", "tab\t", "{not: json}"]
    ours = {**_history(1), "chain_id": "ours", "missing": None, "found": odd, "detail": odd[1]}
    theirs = {**ours, "chain_id": "theirs"}
    with Session(engine) as session, session.begin():
        insert_many(session, HistoryRow, [ours])
        session.add(HistoryRow(**theirs))
    with Session(engine) as session:
        raw = {
            chain: (is_null, text_of, found, detail)
            for chain, is_null, text_of, found, detail in session.execute(
                select(
                    HistoryRow.chain_id,
                    HistoryRow.missing.is_(None),
                    cast(HistoryRow.missing, Text),
                    HistoryRow.found,
                    HistoryRow.detail,
                )
            )
        }
    engine.dispose()
    assert raw["ours"] == raw["theirs"]
    assert raw["ours"][0] is False  # stored, as JSON null
    assert raw["ours"][2] == odd and raw["ours"][3] == odd[1]


def test_a_value_json_cannot_carry_is_refused_before_the_database(db_url: str) -> None:
    """insert_many sends only what a column type turns into JSON; anything else is a
    clear TypeError, and nothing is written."""
    engine = make_engine(db_url)
    row = {**_history(1), "detail": object()}
    with (
        Session(engine) as session,
        pytest.raises((TypeError, StatementError)),
        session.begin(),
    ):
        insert_many(session, HistoryRow, [row])
    with Session(engine) as session:
        assert session.scalars(select(HistoryRow)).first() is None
    engine.dispose()


def test_one_of_matches_exactly_the_given_ids(db_url: str) -> None:
    """Strings compare whole (an id longer than the column is not cut to a stored one),
    integers as integers, an empty batch matches nothing; the statement's text is the same
    for 2 ids and for 500 (PostgreSQL: one array parameter)."""
    engine = make_engine(db_url)
    rows = [_history(i) | {"chain_id": f"{i:032d}"} for i in range(1, 11)]
    with Session(engine) as session, session.begin():
        insert_many(session, HistoryRow, rows)
    with Session(engine) as session:

        def chains(ids: list[str]) -> list[str]:
            stmt = select(HistoryRow.chain_id).where(one_of(session, HistoryRow.chain_id, ids))
            return sorted(session.scalars(stmt))

        assert chains([f"{3:032d}", f"{7:032d}", "absent"]) == [f"{3:032d}", f"{7:032d}"]
        assert chains([f"{3:032d}" + "9"]) == []  # 33 characters: not the stored 32
        assert chains([]) == []
        ids = sorted(session.scalars(select(HistoryRow.id)))
        stmt = select(HistoryRow.chain_id).where(one_of(session, HistoryRow.id, ids[:2]))
        assert sorted(session.scalars(stmt)) == [f"{1:032d}", f"{2:032d}"]
        dialect = session.get_bind().dialect
        short = str(
            select(HistoryRow.id)
            .where(one_of(session, HistoryRow.id, ids[:2]))
            .compile(dialect=dialect)
        )
        long_ = str(
            select(HistoryRow.id)
            .where(one_of(session, HistoryRow.id, list(range(500))))
            .compile(dialect=dialect)
        )
    engine.dispose()
    if dialect.name == "postgresql":
        assert short == long_ and "unnest" in short


@pytest.mark.postgres
def test_one_of_keeps_a_linear_plan_when_the_table_grows_after_planning(
    postgres_server_url: str,
) -> None:
    """psycopg prepares a statement run five times; PostgreSQL then keeps a generic plan
    made for the table as it was. The outbox's mark_sent, planned while the outbox held
    20 rows, must not test every row of a grown outbox against the whole batch (a
    sequential scan filtered by ``id = ANY(array)``: the 08:30 release's updates grew
    from 10 to 130 ms a batch): the batch is matched by index or by hash."""
    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    engine = make_engine(postgres_server_url)

    def outcomes(first: int, n: int) -> list[dict[str, object]]:
        return [
            {"chain_id": f"g{i}", "idempotency_key": f"g{i}:resumed", "application": f"A-{i}",
             "office": "O1", "outcome": "resumed", "missing": [], "decided_at": AT,
             "created_at": AT, "sent_at": None, "send_count": 0}
            for i in range(first, first + n)
        ]  # fmt: skip

    with engine.connect() as conn:  # one connection: its prepared statements
        conn.execute(text("ALTER TABLE outbox SET (autovacuum_enabled = false)"))
        with Session(bind=conn) as session:
            ids = sorted(
                insert_many(session, OutboxRow, outcomes(0, 20), returning="chain_id").values()
            )
            session.commit()
            conn.execute(text("ANALYZE outbox"))
            conn.commit()
            for _ in range(15):  # psycopg prepares it; the server settles on a generic plan
                SqlOutbox(session).mark_sent(ids[:10], AT)
                session.commit()
            insert_many(session, OutboxRow, outcomes(20, 20_000))
            session.commit()
        prepared = conn.execute(
            text("SELECT name, generic_plans FROM pg_prepared_statements "
                 "WHERE statement LIKE 'UPDATE outbox SET sent_at%'")
        ).all()  # fmt: skip
        assert len(prepared) == 1 and prepared[0].generic_plans > 0, prepared
        plan = [
            line
            for (line,) in conn.execute(
                text(f"EXPLAIN EXECUTE {prepared[0].name}(now(), 1, NULL, '{{1,2,3}}')")
            )
        ]
        conn.rollback()
    engine.dispose()
    shown = "\n".join(plan)
    scans = [line for line in plan if "Filter" in line and "ANY" in line]
    assert not scans, shown
    # and the batch is matched by index or by hash, never row against batch in a loop
    assert any("Index Cond" in line or "Hash Cond" in line for line in plan), shown
    assert not any("Join Filter" in line for line in plan), shown
