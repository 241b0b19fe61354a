"""The unit of work over SQL (DESIGN 1, 3, 5): one transaction, a part per table group.

``RetryStore.unit()`` opens a ``SqlUnitOfWork``; its parts (``u.chains``,
``u.history``, ``u.outbox``, ``u.receipts``, ``u.signals``, ``u.dead_letters``) read and
write inside that one transaction, which commits when the block ends and rolls back
entirely when it raises. Actions registered with ``after_commit`` run only after the commit.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from retry_pipeline.adapters.chains import SqlChains
from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.adapters.history import SqlHistory
from retry_pipeline.adapters.outbox import SqlOutbox
from retry_pipeline.adapters.receipts import SqlReceipts
from retry_pipeline.adapters.side_tables import SqlCloseSignals, SqlDeadLetters


class SqlUnitOfWork:
    """One transaction over the retry table, its history, outbox and side tables."""

    def __init__(self, session: Session, node: str | None = None) -> None:
        self.session = session
        self.chains = SqlChains(session)
        self.history = SqlHistory(session, node)
        self.outbox = SqlOutbox(session)
        self.receipts = SqlReceipts(session)
        self.signals = SqlCloseSignals(session)
        self.dead_letters = SqlDeadLetters(session)
        self.on_commit: list[Callable[[], None]] = []

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this unit has committed; never when it rolls back."""
        self.on_commit.append(action)


class RetryStore:
    """Opens units of work over one database.

    ``node``: the worker (Celery node name, else host and pid) recorded on every
    history line this store writes, so a slot's decisions show who made them.
    """

    def __init__(self, engine: Engine, node: str | None = None) -> None:
        self.engine = engine
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self._sessions = make_sessions(engine)

    @property
    def shares_claims(self) -> bool:
        """PostgreSQL claims with SKIP LOCKED; SQLite has one writer at a time."""
        return self.engine.dialect.name != "sqlite"

    @classmethod
    def from_url(cls, url: str) -> RetryStore:
        """A store over the database at ``url``."""
        return cls(make_engine(url))

    @contextmanager
    def unit(self) -> Iterator[SqlUnitOfWork]:
        """One transaction: commit at the end of the block, roll back if it raises."""
        with self._sessions() as session:
            with session.begin():
                unit = SqlUnitOfWork(session, self.node)
                yield unit
            for action in unit.on_commit:
                action()
