"""The outbox's partial indexes (migration 0011) answer the queries that read it.

Each query is captured as the adapter sends it (SQL and parameters) and explained by
the database itself: the relay's never-sent and re-send queries, the unconfirmed
count and list, the given-up count. On PostgreSQL sequential scans are switched off
for the check, so the plan says whether an index *can* answer (a small table would
otherwise be scanned whatever the indexes). A query that drifts from its index's
predicate or expression fails here instead of scanning a grown outbox every minute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text, update
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import OutboxRow
from retry_pipeline.adapters.outbox import SqlOutbox
from retry_pipeline.model import Application, CertificateKind, Ending, Outcome, Procedure
from retry_pipeline.web.queries import unconfirmed_outcomes
from retry_pipeline.web.scope import Scope

NOW = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
CONTINUOUS = Procedure.CONTINUOUS
OLD = 400  # confirmed outcomes of earlier days


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement ``engine`` sends in the block, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def plan(engine: Engine, statement: str, parameters: Any) -> str:
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("SET enable_seqscan = off")
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        rows = conn.exec_driver_sql(explain + statement, parameters).all()
        conn.rollback()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


def _seed(engine: Engine) -> None:
    """Outcomes in every state: never sent, sent, confirmed, given up; and, as in a
    grown outbox, many more confirmed ones (so SQLite's planner, which cannot be told
    not to scan, finds the partial indexes selective)."""
    endings = [
        Ending(
            f"{i:032x}", Application(f"OSS-{i}", "B1" if i % 2 else "B2", CONTINUOUS, f"V{i}"),
            Outcome.AUTO_CORRECTED, frozenset({CertificateKind.SAFETY}), NOW, "R8", attempt_no=1,
        )
        for i in range(40 + OLD)
    ]  # fmt: skip
    with Session(engine) as session, session.begin():
        outbox = SqlOutbox(session)
        added = outbox.add(endings, NOW)
        outbox.mark_sent([o.id for o in added[10:]], NOW, resend_at=NOW + timedelta(minutes=20))
        outbox.give_up([o.id for o in added[30:]], NOW)
        outbox.confirm(added[20].idempotency_key, NOW)
        old = [o.id for o in added[40:]]
        outbox.mark_sent(old, NOW)
        session.execute(update(OutboxRow).where(OutboxRow.id.in_(old)).values(confirmed_at=NOW))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE outbox"))
        else:
            conn.execute(text("ANALYZE"))
        conn.commit()


QUERIES: dict[str, tuple[Callable[[Session], Any], list[str]]] = {
    # what the adapter runs -> the indexes its statements must use, in order
    "relay": (
        lambda s: SqlOutbox(s).pending(100, resend_before=NOW + timedelta(hours=1)),
        ["ix_outbox_unsent", "ix_outbox_resend"],
    ),
    "count_unconfirmed": (lambda s: SqlOutbox(s).count_unconfirmed(), ["ix_outbox_unconfirmed"]),
    "count_given_up": (lambda s: SqlOutbox(s).count_given_up(), ["ix_outbox_given_up"]),
    "console list": (
        lambda s: unconfirmed_outcomes(s, Scope(1, "op", "B1", True, "csrf", None)),
        ["ix_outbox_unconfirmed"],
    ),
}


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_each_outbox_query_is_answered_by_its_partial_index(db_url: str, query: str) -> None:
    engine = make_engine(db_url)
    try:
        _seed(engine)
        run, indexes = QUERIES[query]
        with Session(engine) as session, captured(engine) as sent:
            result = run(session)
        assert result  # the seeded states give every query something to find
        selects = [(sql, p) for sql, p in sent if sql.lstrip().upper().startswith("SELECT")]
        assert len(selects) == len(indexes), selects
        for (sql, parameters), index in zip(selects, indexes, strict=True):
            explained = plan(engine, sql, parameters)
            assert index in explained, f"{query}: {index} not used:\n{explained}\n{sql}"
    finally:
        engine.dispose()


def test_states_move_between_the_indexes(db_url: str) -> None:
    """The relay's view through the indexes: never-sent first, a sent one once its
    back-off is over, neither a confirmed nor a given-up one."""
    engine = make_engine(db_url)
    try:
        _seed(engine)
        with Session(engine) as session:
            outbox = SqlOutbox(session)
            fresh = outbox.pending(100, resend_before=None)
            assert [p.send_count for p in fresh] == [0] * 10
            early = outbox.pending(100, resend_before=NOW + timedelta(minutes=19))
            late = outbox.pending(100, resend_before=NOW + timedelta(minutes=20))
            assert len(early) == 10 and len(late) == 10 + 19  # 20 sent, one confirmed
            assert outbox.count_unconfirmed() == 39
            assert outbox.count_given_up() == 10
    finally:
        engine.dispose()


def test_a_confirmation_finds_its_row_through_the_chain_id(db_url: str) -> None:
    """The idempotency key has no index of its own (migration 0012): ``confirm`` reaches
    the row through the unique chain_id the key begins with, in both its statements."""
    engine = make_engine(db_url)
    try:
        _seed(engine)
        key = f"{7:032x}:{Outcome.AUTO_CORRECTED.value}"
        with Session(engine) as session, captured(engine) as sent:
            assert SqlOutbox(session).confirm(key, NOW)
            session.rollback()
        statements = [(sql, p) for sql, p in sent if not sql.startswith("BEGIN")]
        assert len(statements) == 2, sent  # the UPDATE, then the count
        for sql, parameters in statements:
            explained = plan(engine, sql, parameters)
            assert "chain_id" in explained or "outbox_chain_id_key" in explained, explained
            assert "Seq Scan" not in explained and "SCAN outbox" not in explained.replace(
                "SCAN outbox USING", ""
            ), explained
    finally:
        engine.dispose()
