"""A stand-in examination side for simulations: records every outcome it receives over Celery.

It is its own Celery app (``celery -A simulation.examination worker``), run by the
harness as a process of its own beside the pipeline's worker, as the real
examination side is: nothing is registered on the pipeline's app. Deliveries are
at least once; the idempotency key makes a second one a no-op (it is counted, so
tests can see redeliveries).

Receipts (``examination.report_received``, DESIGN 11) go to the durable sender whose
store ``SIMULATION_SENDER_URL`` names, as the real examination worker hands them to
its ``retry_pipeline.client.DurableSender``: the sender stops re-sending that report.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from celery import Celery
from sqlalchemy import JSON, Engine, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from retry_pipeline import names
from retry_pipeline.adapters.db import make_engine
from retry_pipeline.client import DurableSender
from retry_pipeline.clock import clock_from
from retry_pipeline.config import PREFIX
from retry_pipeline.names import DEFAULT_REPORT_RECEIVED_TASK

_env = os.environ.get
SENDER_URL = "SIMULATION_SENDER_URL"  # not RETRY_PIPELINE_*: the pipeline refuses unknown ones


def _make_app() -> Celery:
    """The examination side's own app: same broker and delivery settings as the pipeline."""
    exam = Celery("simulation-examination", set_as_current=False)
    exam.conf.update(
        broker_url=_env(f"{PREFIX}BROKER_URL", names.DEFAULT_BROKER_URL),
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": int(_env(f"{PREFIX}VISIBILITY_TIMEOUT_S", "3600")),
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=_env(f"{PREFIX}EXAMINATION_QUEUE", "examination"),
        task_create_missing_queues=True,
        timezone="Asia/Tokyo",
        enable_utc=True,
        worker_hijack_root_logger=False,
    )
    return exam


app = _make_app()


class SimBase(DeclarativeBase):
    """Tables of the simulation only (not part of the pipeline's schema)."""


class ReceivedOutcome(SimBase):
    """One outcome as the examination side received it."""

    __tablename__ = "sim_received_outcome"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    task: Mapped[str] = mapped_column(String(120))
    application: Mapped[str] = mapped_column(String(64), index=True)
    chain_id: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    missing: Mapped[list[str]] = mapped_column(JSON)
    decided_at: Mapped[str] = mapped_column(String(40))
    deliveries: Mapped[int] = mapped_column(Integer, default=1)


@cache
def _engine() -> Engine:
    return make_engine(os.environ[f"{PREFIX}DATABASE_URL"])


def create_tables(engine: Engine) -> None:
    """Create the simulation's own table."""
    SimBase.metadata.create_all(engine)


def record(engine: Engine, task: str, body: dict[str, Any]) -> None:
    """Store one delivery; a repeated idempotency key only counts a redelivery."""
    with Session(engine) as session:
        try:
            with session.begin():
                session.add(
                    ReceivedOutcome(
                        idempotency_key=body["idempotency_key"],
                        task=task,
                        application=body["application"],
                        chain_id=body["chain_id"],
                        outcome=body["outcome"],
                        missing=list(body["missing"]),
                        decided_at=body["decided_at"],
                        deliveries=1,
                    )
                )
        except IntegrityError:
            with session.begin():
                session.execute(
                    update(ReceivedOutcome)
                    .where(ReceivedOutcome.idempotency_key == body["idempotency_key"])
                    .values(deliveries=ReceivedOutcome.deliveries + 1)
                )


def received(engine: Engine) -> list[ReceivedOutcome]:
    """Every outcome received so far."""
    with Session(engine) as session:
        return list(session.scalars(select(ReceivedOutcome).order_by(ReceivedOutcome.id)))


def _receive(task: str, body: dict[str, Any]) -> None:
    record(_engine(), task, body)
    # The contract: acknowledge by key, so the pipeline stops re-sending.
    app.send_task(
        names.CONFIRM_OUTCOME,
        args=[body["idempotency_key"]],
        queue=_env(f"{PREFIX}QUEUE", "retry_pipeline"),
    )


@app.task(name=names.DEFAULT_RESUME_TASK)
def resume_pre_review(**body: Any) -> None:
    """Stand-in: pre-review runs again from the start."""
    _receive(names.DEFAULT_RESUME_TASK, body)


@app.task(name=names.DEFAULT_AUTO_CORRECT_TASK)
def auto_correct(**body: Any) -> None:
    """Stand-in: the application is returned for correction."""
    _receive(names.DEFAULT_AUTO_CORRECT_TASK, body)


@cache
def sender() -> DurableSender:
    """The durable sender of this examination side (the store the harness sends from)."""
    clock = clock_from(_env(f"{PREFIX}CLOCK_FILE"))
    return DurableSender(
        os.environ[SENDER_URL],
        broker_url=_env(f"{PREFIX}BROKER_URL"),
        queue=_env(f"{PREFIX}QUEUE", names.DEFAULT_QUEUE),
        clock=clock.now,
    )


@app.task(name=DEFAULT_REPORT_RECEIVED_TASK)
def report_received(**body: Any) -> bool:
    """A report's receipt: the sender keeps it no longer waiting (DESIGN 11)."""
    return sender().receipt(**body)
