"""consent_events.received_at, the ledger's order; event_receipts.clamped_seconds

Revision ID: 0008
Revises: 0007

The consent ledger is ordered by when cartback received each entry, not by the time the shop
stamped on it: a shop clock running ahead must not let a grant outrank a later opt-out. Rows
recorded before this migration take their receive time from `at`, the only time they have.

`event_receipts.clamped_seconds` records how far ahead of its receive time an event's
`occurred_at` was when ingest clamped it to the receive time; NULL when it was not clamped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consent_events") as batch:
        batch.add_column(sa.Column("received_at", cartback.store.tables.UtcDateTime(timezone=True)))
    op.execute("UPDATE consent_events SET received_at = at")
    with op.batch_alter_table("consent_events") as batch:
        batch.alter_column(
            "received_at",
            existing_type=cartback.store.tables.UtcDateTime(timezone=True),
            nullable=False,
        )
    with op.batch_alter_table("event_receipts") as batch:
        batch.add_column(sa.Column("clamped_seconds", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("event_receipts") as batch:
        batch.drop_column("clamped_seconds")
    with op.batch_alter_table("consent_events") as batch:
        batch.drop_column("received_at")
