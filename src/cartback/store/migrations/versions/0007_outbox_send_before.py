"""outbox.send_before: the instant a message must be out by

Revision ID: 0007
Revises: 0006

Messages queued before this migration keep NULL: no limit, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("send_before", cartback.store.tables.UtcDateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("send_before")
