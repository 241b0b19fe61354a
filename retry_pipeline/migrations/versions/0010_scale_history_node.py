"""history lines record the worker that wrote them (issue 11: a slot split across workers)

Revision ID: scale_history_node
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scale_history_node"
down_revision: str | None = "receipts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("retry_history", sa.Column("node", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("retry_history", "node")
