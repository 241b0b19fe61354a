"""The fault ``hold-row-lock``: a session outside the pipeline holds one chain's row lock.

As a worker host that vanished mid-transaction, or an operator's ``psql`` left idle in
``BEGIN``: a session of its own opens a transaction, locks the row of the live chain due
soonest in the retry table (``SELECT ... FOR UPDATE``) and stays idle for two slots of
simulated time, then rolls back. The pipeline's batch, tick and close skip a locked row
(``SKIP LOCKED``), so the other chains are decided at their slot and the held one on a
tick after the lock goes (issue 12, finding 5).

PostgreSQL only: SQLite has no row locks (a writer locks the whole file), so the fault
is refused there before anything starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.orm import ChainRow
from retry_pipeline.calendar import to_local

if TYPE_CHECKING:
    from simulation.faults import FaultStats

FAULT = "hold-row-lock"
HOLD_SLOTS = 2  # how long the lock is held, in slots of simulated time
PATIENCE_SLOTS = 3  # no chain due within a slot for this long: the injection holds nothing


class RowLock:
    """One outside session holding one chain's row lock until ``release``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session: Session | None = None
        self.chain_id: str | None = None

    def take(self, due_by: datetime, avoid: Collection[str] = ()) -> str | None:
        """Lock the row of the live chain due soonest (by ``due_by``, not in ``avoid``);
        its id, or None when there is none."""
        session = Session(self.engine)
        session.begin()
        stmt = (
            select(ChainRow.chain_id)
            .where(ChainRow.next_slot <= due_by, ChainRow.chain_id.not_in(avoid))
            .order_by(ChainRow.next_slot, ChainRow.chain_id)
            .limit(1)
            .with_for_update(skip_locked=True)  # never wait: a batch may hold it right now
        )
        chain_id = session.scalar(stmt)
        if chain_id is None:
            session.rollback()
            session.close()
            return None
        self.session, self.chain_id = session, chain_id
        return chain_id

    def release(self) -> bool:
        """Roll back; False when the server had already ended the idle session."""
        session, self.session = self.session, None
        ended = False
        if session is not None:
            try:
                session.rollback()
            except DBAPIError:
                ended = True  # idle_in_transaction_session_timeout ended it first
            with contextlib.suppress(DBAPIError):
                session.close()
        return not ended


def hold_row_lock_action(
    database_url: str,
    step: timedelta,
    defer: Callable[[datetime, Callable[[], None]], None],
    stats: FaultStats,
    say: Callable[[str], None],
) -> tuple[Callable[[datetime], bool], Callable[[], None]]:
    """The injector's action (lock a chain due within a slot, release it two slots on),
    and what closes the holder's engine after the run."""
    # The pipeline's own session settings (lock_timeout, idle_in_transaction_session_
    # timeout, ...): the holder is what a vanished worker's connection would be.
    engine = make_engine(database_url)
    waiting_since: datetime | None = None

    def hold(now: datetime) -> bool:
        nonlocal waiting_since
        lock = RowLock(engine)
        waiting_since = waiting_since or now
        patient = now - waiting_since < PATIENCE_SLOTS * step
        # A chain not held before: each hold costs one chain its slot, rather than one
        # chain two holds in a row; past the patience, one held before will do.
        chain_id = lock.take(now + step, avoid=stats.held)
        if chain_id is None and not patient:
            chain_id = lock.take(now + step)
        if chain_id is None:
            if patient:
                return False  # the report's chain is not there yet; try on the next poll
            waiting_since = None
            say(f"{FAULT}: no chain due within a slot for {PATIENCE_SLOTS} slots; none held")
            return True
        waiting_since = None
        until = now + HOLD_SLOTS * step
        stats.held.append(chain_id)
        stats.hold_windows.append((now, until))

        def release() -> None:
            how = "released" if lock.release() else "ended by the server before release"
            say(f"{FAULT}: chain {chain_id} {how} at {to_local(until).isoformat()[:19]}")

        defer(until, release)
        return True

    return hold, engine.dispose
