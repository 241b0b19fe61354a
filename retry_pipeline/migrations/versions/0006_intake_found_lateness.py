"""history: what each event found present (R3 across reports) and a late report's lateness (R4a)

Revision ID: intake_found_lateness
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "intake_found_lateness"
down_revision: str | None = "0005_heartbeats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("retry_history") as batch:
        batch.add_column(
            sa.Column("found", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(sa.Column("late_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("retry_history") as batch:
        batch.drop_column("late_s")
        batch.drop_column("found")
