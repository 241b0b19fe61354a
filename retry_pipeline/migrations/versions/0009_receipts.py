"""report receipts (DESIGN 11)

Revision ID: receipts
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import retry_pipeline.adapters.orm

revision: str = "receipts"
down_revision: str | None = "hostile_fair_relay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "report_receipt",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("application", sa.String(length=64), nullable=False),
        sa.Column("office", sa.String(length=32), nullable=False),
        sa.Column("detected_at", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("chain_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", retry_pipeline.adapters.orm.UTCDateTime(), nullable=False),
        sa.Column("sent_at", retry_pipeline.adapters.orm.UTCDateTime(), nullable=True),
        sa.Column("send_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_report_receipt_key", "report_receipt", ["application", "detected_at"], unique=False
    )
    op.create_index(op.f("ix_report_receipt_sent_at"), "report_receipt", ["sent_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_report_receipt_sent_at"), table_name="report_receipt")
    op.drop_index("ix_report_receipt_key", table_name="report_receipt")
    op.drop_table("report_receipt")
