"""fair relay: back-off and a cap on re-sends of unconfirmed outcomes

Revision ID: hostile_fair_relay
Revises: hostile_dead_letter_bytes
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import retry_pipeline.adapters.orm

revision: str = "hostile_fair_relay"
down_revision: str | None = "hostile_dead_letter_bytes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = retry_pipeline.adapters.orm.UTCDateTime
    op.add_column("outbox", sa.Column("next_send_at", utc(), nullable=True))
    op.add_column("outbox", sa.Column("gave_up_at", utc(), nullable=True))
    op.create_index(op.f("ix_outbox_next_send_at"), "outbox", ["next_send_at"], unique=False)
    op.create_index(op.f("ix_outbox_gave_up_at"), "outbox", ["gave_up_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_gave_up_at"), table_name="outbox")
    op.drop_index(op.f("ix_outbox_next_send_at"), table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("gave_up_at")
        batch.drop_column("next_send_at")
