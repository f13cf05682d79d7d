"""store_flows: several flows per store, each with a trigger and a priority

Revision ID: 0015
Revises: 0014

- `store_flows`: the flows a store runs; the event type that enrolls a cart (`checkout.updated`,
  `cart.updated`) and a priority (1 first). Every existing store gets one row for its
  `stores.flow_name` on checkouts, so it keeps running exactly what it ran.
- `stores.flow_suppression_seconds`: how long a shopper in one flow is kept out of the store's
  other flows (NULL: the default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_UTC = cartback.store.tables.UtcDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "store_flows",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("flow_name", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_store_flows_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_flows")),
        sa.UniqueConstraint(
            "store_id", "flow_name", name=op.f("uq_store_flows_store_id_flow_name")
        ),
    )
    with op.batch_alter_table("stores") as batch:
        batch.add_column(sa.Column("flow_suppression_seconds", sa.Integer()))
    op.execute(
        "INSERT INTO store_flows (store_id, flow_name, priority, trigger, created_at, updated_at) "
        "SELECT id, flow_name, 1, 'checkout.updated', created_at, created_at FROM stores"
    )


def downgrade() -> None:
    with op.batch_alter_table("stores") as batch:
        batch.drop_column("flow_suppression_seconds")
    op.drop_table("store_flows")
