"""heartbeats of beat and the workers (retry-pipeline health)

Revision ID: 0005_heartbeats
Revises: 0003
Create Date: 2026-12-02

Self-contained (no import of the package): instants are naive UTC ``DateTime``
columns, as ``UTCDateTime`` stores them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_heartbeats"
down_revision: str | None = "0004_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "heartbeat",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(), nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index(op.f("ix_heartbeat_kind"), "heartbeat", ["kind"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_heartbeat_kind"), table_name="heartbeat")
    op.drop_table("heartbeat")
