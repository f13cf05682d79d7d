"""Delivery: per-store providers, delivery-report columns, service messages, replies

Revision ID: 0010
Revises: 0009

- `store_providers`: a store's own SMS or email provider, its options and references to its
  secrets (`env:NAME`, `file:/path`), never the secrets themselves.
- `stores.support_webhook_url`: where replies that are not keywords are forwarded.
- `outbox.enrollment_id` becomes nullable and `outbox.service_key` (unique) names a service
  message (a STOP confirmation, a HELP answer) that belongs to no enrollment.
- `outbox.error_code`, `outbox.failed_at`: what a provider's refusal or delivery report said.
- `replies`: every inbound message, with what was done about it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_UTC = cartback.store.tables.UtcDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "store_providers",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_store_providers_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_providers")),
        sa.UniqueConstraint("store_id", "kind", name=op.f("uq_store_providers_store_id_kind")),
    )
    with op.batch_alter_table("stores") as batch:
        batch.add_column(sa.Column("support_webhook_url", sa.Text()))
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("enrollment_id", existing_type=_ID, nullable=True)
        batch.add_column(sa.Column("service_key", sa.String(64)))
        batch.add_column(sa.Column("error_code", sa.String(32)))
        batch.add_column(sa.Column("failed_at", _UTC))
        batch.create_unique_constraint(op.f("uq_outbox_service_key"), ["service_key"])
        batch.create_index("ix_outbox_provider_provider_id", ["provider", "provider_id"])
    op.create_table(
        "replies",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("contact_id", _ID),
        sa.Column("cart_id", _ID),
        sa.Column("enrollment_id", _ID),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("dedup_key", sa.String(128), nullable=False),
        sa.Column("provider_id", sa.String(128)),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("recipient", sa.String(320)),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("keyword", sa.String(64)),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("forwarded_at", _UTC),
        sa.Column("forward_error", sa.Text()),
        sa.Column("at", _UTC),
        sa.Column("received_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_replies_store_id_stores"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_replies_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["cart_id"], ["carts.id"], name=op.f("fk_replies_cart_id_carts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["enrollments.id"],
            name=op.f("fk_replies_enrollment_id_enrollments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replies")),
        sa.UniqueConstraint(
            "store_id", "provider", "dedup_key", name=op.f("uq_replies_store_id_provider_dedup_key")
        ),
    )
    op.create_index(op.f("ix_replies_contact_id"), "replies", ["contact_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_replies_contact_id"), table_name="replies")
    op.drop_table("replies")
    # Service messages have no enrollment; they cannot stay once enrollment_id is required.
    op.execute("DELETE FROM outbox WHERE enrollment_id IS NULL")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_provider_provider_id")
        batch.drop_constraint(op.f("uq_outbox_service_key"), type_="unique")
        batch.drop_column("failed_at")
        batch.drop_column("error_code")
        batch.drop_column("service_key")
        batch.alter_column("enrollment_id", existing_type=_ID, nullable=False)
    with op.batch_alter_table("stores") as batch:
        batch.drop_column("support_webhook_url")
    op.drop_table("store_providers")
