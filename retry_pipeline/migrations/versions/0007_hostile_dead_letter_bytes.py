"""dead letters keep any body (bytea), capped, with its size and SHA-256

Revision ID: hostile_dead_letter_bytes
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "hostile_dead_letter_bytes"
down_revision: str | None = "intake_found_lateness"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letter", sa.Column("body", sa.LargeBinary(), nullable=True))
    op.add_column("dead_letter", sa.Column("size", sa.BigInteger(), nullable=True))
    op.add_column("dead_letter", sa.Column("sha256", sa.String(length=64), nullable=True))
    op.add_column("dead_letter", sa.Column("headers", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.drop_column("headers")
        batch.drop_column("sha256")
        batch.drop_column("size")
        batch.drop_column("body")
