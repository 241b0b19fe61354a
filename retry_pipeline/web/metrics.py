"""Prometheus metrics read from SQL on every scrape, so any number of web processes agree."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow
from retry_pipeline.adapters.outbox import SqlOutbox
from retry_pipeline.web.queries import ENDINGS, day_bounds

DECIDED_EVENTS = (*ENDINGS, "attempt")


class PipelineCollector(Collector):
    """Gauges over the retry table, the history, the outbox and the dead letters."""

    def __init__(self, engine: Engine, now: Callable[[], datetime]) -> None:
        self.engine = engine
        self.now = now

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield from self._collect(session)

    def _collect(self, session: Session) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "retry_pipeline_live_chains",
            "Applications in retry, by office and phase",
            labels=["office", "phase"],
        )
        rows = session.execute(
            select(ChainRow.office, ChainRow.phase, func.count()).group_by(
                ChainRow.office, ChainRow.phase
            )
        )
        for office, phase, count in rows:
            live.add_metric([office, phase], count)
        yield live
        parked = session.scalar(
            select(func.count()).select_from(ChainRow).where(ChainRow.phase == "next_day")
        )
        yield GaugeMetricFamily(
            "retry_pipeline_parked_chains",
            "Applications parked at the close until the next business day",
            value=parked or 0,
        )
        dead = session.scalar(
            select(func.count())
            .select_from(DeadLetterRow)
            .where(DeadLetterRow.resolved_at.is_(None))
        )
        yield GaugeMetricFamily(
            "retry_pipeline_dead_letters", "Refused messages not resolved", value=dead or 0
        )
        outbox = SqlOutbox(session)
        yield GaugeMetricFamily(
            "retry_pipeline_unconfirmed_outcomes",
            "Outcomes the examination side has not confirmed",
            value=outbox.count_unconfirmed(),
        )
        yield GaugeMetricFamily(
            "retry_pipeline_given_up_outcomes",
            "Unconfirmed outcomes the relay stopped re-sending (resend them from the console)",
            value=outbox.count_given_up(),
        )
        yield self._decisions_today(session)
        yield from self._late_reports_today(session)
        yield from self._last_slot(session)

    def _decisions_today(self, session: Session) -> Metric:
        start, end = day_bounds(self.now())
        family = GaugeMetricFamily(
            "retry_pipeline_decisions_today",
            "Retries ended today (Japan time), by outcome",
            labels=["outcome"],
        )
        counts = dict.fromkeys(ENDINGS, 0)
        rows = session.execute(
            select(HistoryRow.event, func.count())
            .where(HistoryRow.event.in_(ENDINGS), HistoryRow.slot >= start, HistoryRow.slot < end)
            .group_by(HistoryRow.event)
        )
        for event, count in rows:
            counts[event] = count
        for outcome, count in counts.items():
            family.add_metric([outcome], count)
        return family

    def _late_reports_today(self, session: Session) -> Iterator[Metric]:
        """R4a: reports planned from their arrival today, and the latest of them."""
        start, end = day_bounds(self.now())
        count, latest = session.execute(
            select(func.count(), func.max(HistoryRow.late_s)).where(
                HistoryRow.late_s.is_not(None),
                HistoryRow.recorded_at >= start,
                HistoryRow.recorded_at < end,
            )
        ).one()
        yield GaugeMetricFamily(
            "retry_pipeline_late_reports_today",
            "Reports that reached the pipeline late today (Japan time), planned from arrival",
            value=count or 0,
        )
        yield GaugeMetricFamily(
            "retry_pipeline_late_report_max_seconds",
            "The longest a report took today from detection to the pipeline (R4a)",
            value=latest or 0,
        )

    def _last_slot(self, session: Session) -> Iterator[Metric]:
        """How late the attempts of the last slot that ran were recorded."""
        attempted = (
            HistoryRow.event.in_(DECIDED_EVENTS),
            HistoryRow.attempt_no.isnot(None),
            HistoryRow.slot.isnot(None),
        )
        last = session.scalar(select(func.max(HistoryRow.slot)).where(*attempted))
        slot_ts = GaugeMetricFamily(
            "retry_pipeline_last_slot_timestamp_seconds",
            "The slot of the last attempts that ran (Unix time)",
        )
        lateness = GaugeMetricFamily(
            "retry_pipeline_last_slot_lateness_seconds",
            "Seconds from the last slot to its attempts being recorded (max and mean)",
            labels=["stat"],
        )
        if last is not None:
            recorded = list(
                session.scalars(
                    select(HistoryRow.recorded_at).where(*attempted, HistoryRow.slot == last)
                )
            )
            late = [max((r - last).total_seconds(), 0.0) for r in recorded]
            slot_ts.add_metric([], last.timestamp())
            lateness.add_metric(["max"], max(late))
            lateness.add_metric(["mean"], sum(late) / len(late))
        yield slot_ts
        yield lateness


def registry_for(engine: Engine, now: Callable[[], datetime]) -> CollectorRegistry:
    """A registry holding only the pipeline's collector (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(engine, now))
    return registry
