"""send_rates: a token bucket per provider account and sender, shared by every worker

Revision ID: 0011
Revises: 0010

The dispatcher's send rate used to be a bucket in each worker's memory, so two workers sent
twice the configured rate. A row per (provider account, sender) holds the bucket's tokens and
when they were counted; a worker takes tokens in a tiny transaction of its own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_rates",
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", cartback.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", "sender", name=op.f("pk_send_rates")),
    )


def downgrade() -> None:
    op.drop_table("send_rates")
