"""inbox: ingest as a durable append

Revision ID: 0020
Revises: 0019

- `inbox`: one row per accepted event (unique per store, source and event id), committed before
  the request is answered and applied by the worker; `applied_at`, `status` and `detail` say
  what applying it did, `error` keeps why a row could not be applied. `body` is dropped once the
  row is applied.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_UTC = cartback.store.tables.UtcDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PENDING = sa.text("applied_at IS NULL AND error IS NULL")


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("body", sa.Text()),
        sa.Column("received_at", _UTC, nullable=False),
        sa.Column("applied_at", _UTC),
        sa.Column("status", sa.String(16)),
        sa.Column("detail", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_inbox_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
        sa.UniqueConstraint(
            "store_id", "source", "event_id", name=op.f("uq_inbox_store_id_source_event_id")
        ),
    )
    op.create_index(
        "ix_inbox_pending", "inbox", ["id"], sqlite_where=_PENDING, postgresql_where=_PENDING
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_pending", table_name="inbox")
    op.drop_table("inbox")
