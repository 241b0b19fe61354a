"""One function wires the pipeline from settings (cosmicpython's bootstrap)."""

from __future__ import annotations

from typing import Any

from retry_pipeline.adapters.celery_io import CeleryDispatcher, CeleryExaminationGateway
from retry_pipeline.adapters.db import make_engine
from retry_pipeline.adapters.registry import SqlCertificateRegistry
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.clock import Clock, clock_from
from retry_pipeline.config import Settings
from retry_pipeline.ports import Dispatcher, ExaminationGateway
from retry_pipeline.service.pipeline import Pipeline


def bootstrap(
    settings: Settings,
    app: Any,
    *,
    clock: Clock | None = None,
    dispatcher: Dispatcher | None = None,
    gateway: ExaminationGateway | None = None,
    node: str | None = None,
) -> Pipeline:
    """The pipeline over the configured database, clock and Celery app.

    ``node``: the worker's name on its history lines (default: host and pid).
    """
    clock = clock or clock_from(settings.clock_file)
    store = RetryStore(make_engine(settings.database_url), node=node)
    # Reads of Kei-MOTAS take no write lock (a separate engine on SQLite).
    registry = SqlCertificateRegistry(
        make_engine(settings.database_url, write_lock=False), settings
    )
    return Pipeline(
        store=store,
        registry=registry,
        calendar=BusinessCalendar(settings),
        clock=clock,
        dispatcher=dispatcher or CeleryDispatcher(app, clock, settings),
        gateway=gateway or CeleryExaminationGateway(app, settings),
    )
