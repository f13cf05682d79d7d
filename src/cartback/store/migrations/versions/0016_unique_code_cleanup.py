"""discount_codes: what a shop holds for each per-cart code, and one such code per cart

Revision ID: 0016
Revises: 0015

- `platform`, `platform_ref`: the shop that created a per-cart code (pool `@unique`) and its
  name for the object to delete (a Shopify price rule id, a WooCommerce coupon id).
- `expires_at`: when the code expires; `removed_at`: when the cleanup deleted it from the shop
  after it expired unused.
- A unique index on (store_id, cart_id) over the `@unique` pool: one shop-issued code per cart.
  Carts that were given more than one before keep the first, the one their messages showed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_UTC = cartback.store.tables.UtcDateTime(timezone=True)
_WHERE = sa.text("pool = '@unique'")
_EXPIRING = sa.text("pool = '@unique' AND removed_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("discount_codes") as batch:
        batch.add_column(sa.Column("platform", sa.String(20)))
        batch.add_column(sa.Column("platform_ref", sa.String(100)))
        batch.add_column(sa.Column("expires_at", _UTC))
        batch.add_column(sa.Column("removed_at", _UTC))
    op.execute(
        "DELETE FROM discount_codes WHERE pool = '@unique' AND cart_id IS NOT NULL AND id > "
        "(SELECT MIN(first.id) FROM discount_codes AS first WHERE first.pool = '@unique' "
        "AND first.store_id = discount_codes.store_id AND first.cart_id = discount_codes.cart_id)"
    )
    op.create_index(
        "uq_discount_codes_unique_cart",
        "discount_codes",
        ["store_id", "cart_id"],
        unique=True,
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )
    op.create_index(
        "ix_discount_codes_expiring",
        "discount_codes",
        ["expires_at"],
        sqlite_where=_EXPIRING,
        postgresql_where=_EXPIRING,
    )


def downgrade() -> None:
    op.drop_index("ix_discount_codes_expiring", table_name="discount_codes")
    op.drop_index("uq_discount_codes_unique_cart", table_name="discount_codes")
    with op.batch_alter_table("discount_codes") as batch:
        batch.drop_column("removed_at")
        batch.drop_column("expires_at")
        batch.drop_column("platform_ref")
        batch.drop_column("platform")
