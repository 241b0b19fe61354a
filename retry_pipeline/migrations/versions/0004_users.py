"""console users, login throttling, dead-letter replay and resolution

Revision ID: 0004_users
Revises: 0003
Create Date: 2026-12-02

Self-contained: plain SQLAlchemy types only (UTC instants are naive DateTime columns,
as ``retry_pipeline.adapters.orm.UTCDateTime`` stores them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_users"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_user",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("office", sa.String(length=32), nullable=False),
        sa.Column("is_operator", sa.Boolean(), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("session_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "console_login_failure",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("dead_letter") as batch:
        batch.add_column(sa.Column("replayed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("replay_result", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("resolved_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("resolved_by", sa.String(length=64), nullable=True))
        batch.create_index("ix_dead_letter_resolved_at", ["resolved_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.drop_index("ix_dead_letter_resolved_at")
        batch.drop_column("resolved_by")
        batch.drop_column("resolved_at")
        batch.drop_column("replay_result")
        batch.drop_column("replayed_at")
    op.drop_table("console_login_failure")
    op.drop_table("console_user")
