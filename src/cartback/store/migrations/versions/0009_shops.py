"""shop connections, webhook deliveries, checkout aliases and the erasure suppression list

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = cartback.store.tables.UtcDateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", _ID, autoincrement=True, nullable=False)


def _store(table: str) -> list[Any]:
    return [
        sa.Column("store_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=f"fk_{table}_store_id_stores", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
    ]


def upgrade() -> None:
    op.create_table(
        "shop_connections",
        _id(),
        *_store("shop_connections"),
        sa.Column("platform", sa.String(length=20), nullable=False),
        sa.Column("shop_domain", sa.String(length=255), nullable=False),
        sa.Column("secret_ref", sa.String(length=400), nullable=False),
        sa.Column("previous_secret_ref", sa.String(length=400), nullable=True),
        sa.Column("api_token_ref", sa.String(length=400), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.UniqueConstraint("store_id", "platform", name="uq_shop_connections_store_id_platform"),
    )
    op.create_table(
        "shop_deliveries",
        _id(),
        *_store("shop_deliveries"),
        sa.Column("platform", sa.String(length=20), nullable=False),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("replayed_at", _TIME, nullable=True),
        sa.UniqueConstraint(
            "store_id",
            "platform",
            "delivery_id",
            name="uq_shop_deliveries_store_id_platform_delivery_id",
        ),
    )
    op.create_index("ix_shop_deliveries_received_at", "shop_deliveries", ["received_at"])
    op.create_table(
        "shop_checkouts",
        _id(),
        *_store("shop_checkouts"),
        sa.Column("platform", sa.String(length=20), nullable=False),
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("checkout_id", sa.String(length=100), nullable=True),
        sa.Column("cart_token", sa.String(length=200), nullable=True),
        sa.UniqueConstraint(
            "store_id", "platform", "token", name="uq_shop_checkouts_store_id_platform_token"
        ),
    )
    op.create_index("ix_shop_checkouts_checkout_id", "shop_checkouts", ["store_id", "checkout_id"])
    op.create_index("ix_shop_checkouts_cart_token", "shop_checkouts", ["store_id", "cart_token"])
    op.create_table(
        "suppressions",
        _id(),
        *_store("suppressions"),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.UniqueConstraint(
            "store_id", "kind", "digest", name="uq_suppressions_store_id_kind_digest"
        ),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("ix_shop_checkouts_cart_token", table_name="shop_checkouts")
    op.drop_index("ix_shop_checkouts_checkout_id", table_name="shop_checkouts")
    op.drop_table("shop_checkouts")
    op.drop_index("ix_shop_deliveries_received_at", table_name="shop_deliveries")
    op.drop_table("shop_deliveries")
    op.drop_table("shop_connections")
