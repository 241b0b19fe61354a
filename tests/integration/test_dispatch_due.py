"""``dispatch_due``, the grid tick's one statement: what it marks and in which order.

The tick marks every due chain that is not in flight and returns one ``Dispatch`` per
chain, ordered by slot then chain id, each slot in Japan time, on SQLite and PostgreSQL.
The order is taken from the database's UTC instants (a release's thousands of rows share
one slot), so it must agree with the Japan-time order, across a UTC date line too.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from retry_pipeline.adapters.orm import ChainRow
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import parse_instant
from retry_pipeline.model import Dispatch

NOW = parse_instant("2026-11-30T09:10:00+09:00")
SLOTS = [
    parse_instant("2026-11-30T08:30:00+09:00"),  # 2026-11-29 23:30 UTC: the day before
    parse_instant("2026-11-30T09:00:00+09:00"),  # 00:00 UTC
    parse_instant("2026-11-30T09:10:00+09:00"),  # now
]


def _seed(store: RetryStore, chains: list[tuple[str, datetime, int, datetime | None]]) -> None:
    at = datetime.now(UTC)
    rows = [
        {"chain_id": chain_id, "application": f"D-{chain_id}", "office": "B1",
         "procedure": "continuous", "vehicle": f"V-{chain_id}", "insurer_id": None,
         "insurance_no": None, "missing": ["safety"], "found": [], "confirmed": [],
         "detected_at": SLOTS[0] - timedelta(minutes=7), "attempts_made": made,
         "phase": "same_day", "phase_used": made, "next_slot": slot,
         "dispatched_for": dispatched, "version": 1, "created_at": at, "updated_at": at}
        for chain_id, slot, made, dispatched in chains
    ]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(ChainRow), rows)


def test_due_chains_come_in_slot_then_chain_order_in_japan_time(store: RetryStore) -> None:
    rng = random.Random(7)
    chains = [
        (f"c{rng.randrange(10**6):06d}-{i}", rng.choice(SLOTS), i % 4, None) for i in range(60)
    ]
    in_flight = ("in-flight", SLOTS[2], 1, SLOTS[2])  # its message was sent: not again
    overdue = ("overdue", SLOTS[0], 2, SLOTS[0])  # sent, but a whole step ago: again
    later = ("later", SLOTS[2] + timedelta(minutes=10), 0, None)  # not due yet
    _seed(store, [*chains, in_flight, overdue, later])

    with store.unit() as u:
        found = u.chains.dispatch_due(NOW, NOW - timedelta(minutes=10))

    want = sorted(
        [Dispatch(c, made + 1, slot) for c, slot, made, _ in [*chains, overdue]],
        key=lambda d: (d.slot, d.chain_id),
    )
    assert found == want
    assert all(d.slot.utcoffset() == timedelta(hours=9) for d in found)
    assert [d.slot for d in found] == sorted(d.slot for d in found)
    with store.unit() as u:  # marked: sent again only where a whole step overdue
        again = u.chains.dispatch_due(NOW, NOW - timedelta(minutes=10))
    assert again == [d for d in want if d.slot <= NOW - timedelta(minutes=10)]
    assert {d.slot for d in want} - {d.slot for d in again} == {SLOTS[2]}
