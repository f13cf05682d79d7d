"""discount code pools and the store's platform

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "discount_codes",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("cart_id", _ID, nullable=True),
        sa.Column("assigned_at", cartback.store.tables.UtcDateTime(timezone=True), nullable=True),
        sa.Column("created_at", cartback.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cart_id"],
            ["carts.id"],
            name=op.f("fk_discount_codes_cart_id_carts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_discount_codes_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discount_codes")),
        sa.UniqueConstraint(
            "store_id", "pool", "code", name=op.f("uq_discount_codes_store_id_pool_code")
        ),
    )
    op.create_index("ix_discount_codes_free", "discount_codes", ["store_id", "pool", "assigned_at"])
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("platform", sa.String(length=20), server_default="generic", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.drop_column("platform")
    op.drop_index("ix_discount_codes_free", table_name="discount_codes")
    op.drop_table("discount_codes")
