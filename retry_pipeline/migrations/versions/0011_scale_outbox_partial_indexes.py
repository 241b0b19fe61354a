"""the outbox's open rows in partial indexes (issue 11: the 08:30 release writes thousands)

The single-column indexes on sent_at, confirmed_at, next_send_at and gave_up_at held
every row, confirmed or not, and every new outcome and every send touched all four.
Partial indexes hold the open outcomes only, shaped as the relay, the unconfirmed list
and the given-up count ask.

Revision ID: scale_outbox_partial_indexes
Revises: scale_history_node
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scale_outbox_partial_indexes"
down_revision: str | None = "scale_history_node"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "confirmed_at IS NULL AND gave_up_at IS NULL"
PARTIAL: dict[str, tuple[list[str | sa.TextClause], str]] = {
    "ix_outbox_unsent": (["id"], f"{OPEN} AND sent_at IS NULL"),
    "ix_outbox_resend": (
        [sa.text("coalesce(next_send_at, sent_at)"), "id"],
        f"{OPEN} AND sent_at IS NOT NULL",
    ),
    "ix_outbox_unconfirmed": (["id"], "confirmed_at IS NULL"),
    "ix_outbox_given_up": (["id"], "confirmed_at IS NULL AND gave_up_at IS NOT NULL"),
}
SINGLE = ("sent_at", "confirmed_at", "next_send_at", "gave_up_at")


def upgrade() -> None:
    for column in SINGLE:
        op.drop_index(f"ix_outbox_{column}", table_name="outbox")
    for name, (columns, where) in PARTIAL.items():
        op.create_index(
            name, "outbox", columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )


def downgrade() -> None:
    for name in PARTIAL:
        op.drop_index(name, table_name="outbox")
    for column in SINGLE:
        op.create_index(f"ix_outbox_{column}", "outbox", [column], unique=False)
