"""One function wires the pipeline from settings (cosmicpython's bootstrap)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

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
    store = RetryStore(make_engine(settings.database_url, settings=settings), node=node)
    # Kei-MOTAS: read only, from RETRY_PIPELINE_REGISTRY_URL (default: the database).
    registry = SqlCertificateRegistry(
        registry_engine(settings.registry_database_url, settings), settings
    )
    return Pipeline(
        store=store,
        registry=registry,
        calendar=BusinessCalendar(settings),
        clock=clock,
        dispatcher=dispatcher or CeleryDispatcher(app, clock, settings),
        gateway=gateway or CeleryExaminationGateway(app, settings),
    )


def registry_engine(url: str, settings: Settings | None = None) -> Engine:
    """An engine that only reads: no write lock on SQLite, read-only sessions on PostgreSQL."""
    if make_url(url).get_backend_name() == "sqlite":
        return make_engine(url, write_lock=False, settings=settings)
    engine = make_engine(url, settings=settings, connect_args={"connect_timeout": 10})
    return engine.execution_options(postgresql_readonly=True)
