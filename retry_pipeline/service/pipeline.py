"""``Pipeline``: the one entry point tasks, worker hooks and the CLI call.

Each method is one use case (``service/*.py``) over the ports; this class only holds
the dependencies ``bootstrap`` wired and reads nothing itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import Clock
from retry_pipeline.errors import InvalidReport
from retry_pipeline.model import PORTAL_STATUS_UNDER_REVIEW, LetterBody, Receipt, Report
from retry_pipeline.ports import CertificateRegistry, Dispatcher, ExaminationGateway, Store
from retry_pipeline.service import closing, grid, intake, letters, outcomes, receipts, slots
from retry_pipeline.service.context import Deps
from retry_pipeline.service.grid import TickResult
from retry_pipeline.service.intake import Accepted


class Pipeline:
    """Carries out SPEC R1–R16 over the store, the registry, the clock and the broker."""

    def __init__(
        self,
        store: Store,
        registry: CertificateRegistry,
        calendar: BusinessCalendar,
        clock: Clock,
        dispatcher: Dispatcher,
        gateway: ExaminationGateway,
    ) -> None:
        self.deps = Deps(store, registry, calendar, clock, dispatcher, gateway)

    @property
    def store(self) -> Store:
        return self.deps.store

    @property
    def clock(self) -> Clock:
        return self.deps.clock

    @property
    def calendar(self) -> BusinessCalendar:
        return self.deps.calendar

    def accept_report(self, report: Report, sent_at: datetime | None = None) -> Accepted:
        """R1, R3, R4, R4a: start a chain, merge into the live one, or auto-correct at once;
        a refusal (R1, R4 conflict, R4a stale, future) raises ``InvalidReport``."""
        result = intake.accept_reports(self.deps, [report], sent_at)[0]
        if isinstance(result, InvalidReport):
            raise result
        return result

    def accept_reports(
        self,
        reports: Sequence[Report],
        sent_at: datetime | None = None,
        *,
        each_sent_at: Sequence[datetime | None] | None = None,
    ) -> list[Accepted | InvalidReport]:
        """``accept_report`` for many reports in one transaction; refusals as their errors.
        ``each_sent_at``: each report's own sent-at (R4a), for one-report messages."""
        return intake.accept_reports(self.deps, reports, sent_at, each_sent_at=each_sent_at)

    def run_slot(
        self, slot: datetime, batch: int = slots.BATCH, decided: dict[str, str] | None = None
    ) -> dict[str, int]:
        """R8: every chain due at ``slot``, decided in batches; counts of what became of
        them, and in ``decided`` (if given) how, by application (the first ``slots.SHOWN``)."""
        return slots.run_slot(self.deps, slot, batch, decided)

    def tick(self) -> TickResult:
        """DESIGN 4: the grid tick."""
        return grid.tick(self.deps)

    def park_if_closed(self, now: datetime) -> int:
        """R10: park every chain still slotted today once the close has come."""
        return closing.park_if_closed(self.deps, now)

    def record_close(self, at: datetime | None = None) -> int:
        """R10: an explicit close signal (default now)."""
        return closing.record_close(self.deps, at)

    def relay(self, limit: int = outcomes.RELAY_LIMIT) -> int:
        """DESIGN 5: deliver outcomes at least once."""
        return outcomes.relay(self.deps, limit)

    def confirm_outcome(self, idempotency_key: str) -> bool:
        """The examination side acknowledges an outcome."""
        return outcomes.confirm_outcome(self.deps, idempotency_key)

    def keep_dead_letter(
        self,
        task: str,
        reason: str,
        raw: str | bytes,
        receipt: Receipt | None = None,
        *,
        headers: Mapping[str, Any] | None = None,
        whole: LetterBody | None = None,
    ) -> int:
        """Keep a refused message (its body, or its head with ``whole``), with a refused
        report's receipt; raises if it cannot."""
        return letters.keep_dead_letter(
            self.deps, task, reason, raw, receipt, headers=headers, whole=whole
        )

    def purge_dead_letters(self, older_than: timedelta) -> int:
        """Retention: delete dead letters older than ``older_than``."""
        return letters.purge_dead_letters(self.deps, older_than)

    def relay_receipts(self, limit: int = receipts.RELAY_LIMIT) -> int:
        """DESIGN 11: deliver the receipts the broker did not take at commit."""
        return receipts.relay_receipts(self.deps, limit)

    def portal_status(self, application: str) -> str | None:
        """R14: 「検査申請審査中」 while the application's chain is live; None otherwise
        (the examination side's own status applies). Nothing about retries is shown."""
        with self.store.unit() as u:
            live = u.chains.of_applications([application], lock=False)
        return PORTAL_STATUS_UNDER_REVIEW if live else None
