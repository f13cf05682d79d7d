"""webhook_endpoints and webhook_deliveries: signed outbound events per store

Revision ID: 0014
Revises: 0013

A store's endpoints subscribe to cart.abandoned, cart.recovered, message.sent and
contact.opted_out. Each event becomes a delivery row in the transaction of the change that
caused it; the worker sends it later, retries it with backoff and gives up with a reason.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = cartback.store.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("store_id", _Id, nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret_ref", sa.String(500), nullable=False),
        sa.Column("created_at", _Time, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_webhook_endpoints_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        op.f("ix_webhook_endpoints_store_id"), "webhook_endpoints", ["store_id"], unique=False
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("endpoint_id", _Id, nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("event_key", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", _Time, nullable=False),
        sa.Column("lease_until", _Time, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("delivered_at", _Time, nullable=True),
        sa.Column("updated_at", _Time, nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "endpoint_id", "event_key", name=op.f("uq_webhook_deliveries_endpoint_id_event_key")
        ),
    )
    op.create_index(
        op.f("ix_webhook_deliveries_status_available_at"),
        "webhook_deliveries",
        ["status", "available_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
