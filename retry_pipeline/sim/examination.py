"""A stand-in examination side for simulations: records every outcome it receives over Celery.

Loaded into the simulation's worker with ``-I retry_pipeline.sim.examination``.
Deliveries are at least once; the idempotency key makes a second one a no-op
(it is counted, so tests can see redeliveries).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from sqlalchemy import JSON, Engine, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from retry_pipeline.adapters.db import make_engine
from retry_pipeline.tasks import app


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
    return make_engine(os.environ["RETRY_PIPELINE_DATABASE_URL"])


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
        "retry_pipeline.confirm_outcome",
        args=[body["idempotency_key"]],
        queue=os.environ.get("RETRY_PIPELINE_QUEUE", "retry_pipeline"),
    )


@app.task(name="examination.resume_pre_review")
def resume_pre_review(**body: Any) -> None:
    """Stand-in: pre-review runs again from the start."""
    _receive("examination.resume_pre_review", body)


@app.task(name="examination.auto_correct")
def auto_correct(**body: Any) -> None:
    """Stand-in: the application is returned for correction."""
    _receive("examination.auto_correct", body)
