"""What every use case is handed: the ports, the calendar and the clock (one bootstrap)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from retry_pipeline.calendar import BusinessCalendar, to_local
from retry_pipeline.clock import Clock
from retry_pipeline.ports import (
    CertificateRegistry,
    Dispatcher,
    ExaminationGateway,
    Store,
    UnitOfWork,
)

log = logging.getLogger(__name__)

SIGNAL_HORIZON_DAYS = 31  # close signals are read from yesterday up to this far ahead
SENT_SLOTS_KEPT = 256


@dataclass
class SlotSender:
    """Sends a future slot's message once per process: a surge of reports sends a handful.

    A slot that has come may have had its message run already (a catching-up chain
    arrives after it), so a due slot is always sent again. A failed send is logged:
    the grid tick finds the attempts overdue and sends them again.
    """

    dispatcher: Dispatcher
    clock: Clock
    _sent: dict[datetime, None] = field(default_factory=dict)  # insertion-ordered, bounded

    def send_once(self, slot: datetime) -> None:
        """Send ``slot``'s message unless this process already sent it and it is still ahead."""
        if slot in self._sent and slot > self.clock.now():
            return
        try:
            self.dispatcher.send_slot(slot)
        except Exception:  # broker down: the tick finds it overdue and sends it again
            log.exception("could not send the attempts of %s; the grid tick will", slot)
            return
        self._sent[slot] = None
        while len(self._sent) > SENT_SLOTS_KEPT:
            self._sent.pop(next(iter(self._sent)))


@dataclass
class Deps:
    """The use cases' dependencies, wired once by ``retry_pipeline.bootstrap``."""

    store: Store
    registry: CertificateRegistry
    calendar: BusinessCalendar
    clock: Clock
    dispatcher: Dispatcher
    gateway: ExaminationGateway
    slots: SlotSender = field(init=False)

    def __post_init__(self) -> None:
        self.slots = SlotSender(self.dispatcher, self.clock)

    @property
    def step(self) -> timedelta:
        """One grid step (R6)."""
        return timedelta(minutes=self.calendar.settings.step_min)


def close_signals(u: UnitOfWork, around: datetime) -> list[datetime]:
    """Close signals from the day before ``around`` to a month after (R10)."""
    day = to_local(around).date()
    return u.signals.between(day - timedelta(days=1), day + timedelta(days=SIGNAL_HORIZON_DAYS))
