"""The fault plan (pure): ``flush-queued-reports`` lands just before a report is sent."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.config import Settings
from simulation.faults import FAULTS, QUEUED_LEAD, before_reports, plan_injections

TOKYO = ZoneInfo("Asia/Tokyo")


@dataclass(frozen=True)
class Sent:
    detected_at: datetime


REPORTS = [Sent(datetime(2026, 11, 27, 8, m, tzinfo=TOKYO)) for m in (36, 51, 58)]
START, END = (
    datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO),
    datetime(2026, 11, 27, 16, 0, tzinfo=TOKYO),
)


def test_flush_queued_reports_is_a_known_fault_last_so_the_others_keep_their_moments() -> None:
    assert FAULTS[-1] == "flush-queued-reports"
    cal = BusinessCalendar(Settings())
    with_it = plan_injections(FAULTS, 3, cal, START, END)
    without = plan_injections(FAULTS[:-1], 3, cal, START, END)
    assert [i for i in with_it if i.fault != "flush-queued-reports"] == without


def test_each_flush_of_queued_reports_comes_a_lead_before_some_report() -> None:
    cal = BusinessCalendar(Settings())
    plan = before_reports(
        plan_injections(FAULTS, 3, cal, START, END), REPORTS, random.Random("3-queued")
    )
    moments = [i.at for i in plan if i.fault == "flush-queued-reports"]
    assert len(moments) == 2
    assert {m + QUEUED_LEAD for m in moments} <= {r.detected_at for r in REPORTS}
    assert plan == sorted(plan, key=lambda i: (i.at, i.fault))
    assert timedelta(minutes=Settings().step_min) > QUEUED_LEAD
