"""the outbox keeps four indexes a new outcome enters, not six (issue 11: the release)

Dropped: the index on ``application``, which no query reads (the console lists open
outcomes by office through ``ix_outbox_unconfirmed``), and the unique constraint on
``idempotency_key``. The key is ``<chain_id>:<outcome>`` (``model.idempotency_key``)
and ``chain_id`` is unique, so two rows never share a key; a confirmation finds its
row through the ``chain_id`` the key begins with (``SqlOutbox.confirm``). Each of the
08:30 release's outcomes wrote both into random places of their B-trees. A check
takes the constraint's place: a row's key is its chain's own (no index needed).

Revision ID: scale_outbox_fewer_indexes
Revises: scale_outbox_partial_indexes
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scale_outbox_fewer_indexes"
down_revision: str | None = "scale_outbox_partial_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL named the constraint of 0001 itself; SQLite's has no name, so batch mode
# (which copies the table) names the reflected one by this convention to drop it.
POSTGRES_NAME = "outbox_idempotency_key_key"
SQLITE_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
SQLITE_NAME = "uq_outbox_idempotency_key"
# SQLite cannot reflect an index on an expression, so batch mode's copy of the table
# would lose 0011's re-send index: it is dropped before the copy and made again after.
RESEND = "ix_outbox_resend"
RESEND_WHERE = "confirmed_at IS NULL AND gave_up_at IS NULL AND sent_at IS NOT NULL"
CHECK = "ck_outbox_idempotency_key"
KEY_IS_THE_CHAINS = "idempotency_key = chain_id || ':' || outcome"


def upgrade() -> None:
    op.drop_index("ix_outbox_application", table_name="outbox")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(POSTGRES_NAME, "outbox", type_="unique")
        op.create_check_constraint(CHECK, "outbox", KEY_IS_THE_CHAINS)
        return
    op.drop_index(RESEND, table_name="outbox")
    with op.batch_alter_table("outbox", naming_convention=SQLITE_CONVENTION) as batch:
        batch.drop_constraint(SQLITE_NAME, type_="unique")
        batch.create_check_constraint(CHECK, KEY_IS_THE_CHAINS)
    _create_resend_index()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index(RESEND, table_name="outbox")
        with op.batch_alter_table("outbox") as batch:  # named now: dropped by name again
            batch.drop_constraint(CHECK, type_="check")
            batch.create_unique_constraint(SQLITE_NAME, ["idempotency_key"])
        _create_resend_index()
    else:
        op.drop_constraint(CHECK, "outbox", type_="check")
        op.create_unique_constraint(POSTGRES_NAME, "outbox", ["idempotency_key"])
    op.create_index("ix_outbox_application", "outbox", ["application"], unique=False)


def _create_resend_index() -> None:
    op.create_index(
        RESEND, "outbox", [sa.text("coalesce(next_send_at, sent_at)"), "id"],
        sqlite_where=sa.text(RESEND_WHERE),
    )  # fmt: skip
