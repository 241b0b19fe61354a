"""A small morning for the console tests, made by the real service (fakes for the broker).

Friday 2026-11-27 (Japan time): KEI-OSAKA has one application in retry (OSAKA-LIVE), one
parked at the close (OSAKA-PARKED) and one resumed at 09:10 (OSAKA-RESUMED); KEI-KOBE has
one in retry (KOBE-LIVE). Two refused messages: a valid report refused earlier
(OSAKA-REPLAY, replayable) and one that is not JSON. The clock stops at 15:57.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.adapters.registry import SqlCertificateRegistry, to_row
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.messages import parse_report
from retry_pipeline.model import (
    InsuranceCertificate,
    PendingOutcome,
    PendingReceipt,
    SafetyCertificate,
)
from retry_pipeline.service.pipeline import Pipeline

TOKYO = ZoneInfo("Asia/Tokyo")
DAY = date(2026, 11, 27)
END = datetime(2026, 11, 27, 15, 57, tzinfo=TOKYO)
OSAKA, KOBE = "KEI-OSAKA", "KEI-KOBE"


@dataclass
class Recorder:
    """Dispatcher and gateway fake: keeps what would have gone to the broker."""

    slots: list[datetime] = field(default_factory=list)
    outcomes: list[PendingOutcome] = field(default_factory=list)
    receipts: list[PendingReceipt] = field(default_factory=list)

    def send_slot(self, slot: datetime) -> None:
        self.slots.append(slot)

    def deliver(self, outcomes: Sequence[PendingOutcome]) -> None:
        self.outcomes.extend(outcomes)

    def deliver_receipt(self, receipt: PendingReceipt) -> None:
        self.receipts.append(receipt)


def message(application: str, office: str, kind: str, at: datetime) -> dict[str, object]:
    return {
        "application": application,
        "office": office,
        "procedure": "continuous",
        "vehicle": f"VIN-{application}",
        "missing": [kind],
        "confirmed": [],
        "detected_at": at.isoformat(),
    }


def make_service(store: RetryStore, db_url: str, clock: FixedClock, recorder: Recorder) -> Pipeline:
    settings = Settings(database_url=db_url)
    return Pipeline(
        store=store,
        registry=SqlCertificateRegistry(make_engine(db_url, write_lock=False), settings),
        calendar=BusinessCalendar(settings),
        clock=clock,
        dispatcher=recorder,
        gateway=recorder,
    )


def seed(db_url: str) -> None:
    """Write the morning into the (migrated) database at ``db_url``."""
    clock = FixedClock(datetime(2026, 11, 27, 9, 5, tzinfo=TOKYO))
    store = RetryStore.from_url(db_url)
    svc = make_service(store, db_url, clock, Recorder())
    at = clock.now()
    for app, office, kind in [
        ("OSAKA-LIVE", OSAKA, "safety"),
        ("OSAKA-RESUMED", OSAKA, "safety"),
        ("KOBE-LIVE", KOBE, "safety"),
    ]:
        svc.accept_report(parse_report(message(app, office, kind, at)))
    cert = SafetyCertificate(
        id="S-1",
        vehicle="VIN-OSAKA-RESUMED",
        inspected_on=date(2026, 11, 20),
        insurer_id="INS-1",
        insurance_no="NO-1",
        available_at=datetime(2026, 11, 27, 9, 7, tzinfo=TOKYO),
    )
    insurance = InsuranceCertificate(
        id="I-1",
        insurer_id="INS-1",
        insurance_no="NO-1",
        vehicle="VIN-OSAKA-RESUMED",
        available_at=cert.available_at,
    )
    with make_sessions(store.engine)() as session, session.begin():
        session.add_all([to_row(cert), to_row(insurance)])
    clock.current = datetime(2026, 11, 27, 9, 10, tzinfo=TOKYO)
    svc.run_slot(clock.current)
    clock.current = datetime(2026, 11, 27, 15, 56, tzinfo=TOKYO)
    svc.accept_report(parse_report(message("OSAKA-PARKED", OSAKA, "insurance", clock.now())))
    refused = message("OSAKA-REPLAY", OSAKA, "safety", clock.now())
    with store.unit() as u:
        u.dead_letters.add(
            "retry_pipeline.report_missing",
            "database unavailable during intake",
            json.dumps(refused),
            clock.now(),
        )
        u.dead_letters.add("retry_pipeline.report_missing", "not JSON: ...", "{oops", clock.now())
    store.engine.dispose()
