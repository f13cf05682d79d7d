"""attributions and store measurement settings

Revision ID: 0013
Revises: 0012

Orders are credited to one message when they arrive (core.attribution); `attributions` keeps
that credit so reports are queries. `stores.measurement` holds a store's attribution windows
and model, its currency rates, its message prices and promoted variants.
`enrollments.held_channel` records a cart drawn into a flow's channel holdout (no SMS, say).
Reports take one flow's carts abandoned in a window: an index on (store, flow, abandoned_at).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stores") as batch:
        batch.add_column(sa.Column("measurement", sa.JSON(), nullable=True))
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("held_channel", sa.String(8), nullable=True))
    when = cartback.store.tables.UtcDateTime(timezone=True)
    op.create_table(
        "attributions",
        sa.Column("id", cartback.store.tables.Id, autoincrement=True, nullable=False),
        sa.Column("store_id", cartback.store.tables.Id, nullable=False),
        sa.Column("order_id", cartback.store.tables.Id, nullable=False),
        sa.Column("outbox_id", cartback.store.tables.Id, nullable=True),
        sa.Column("enrollment_id", cartback.store.tables.Id, nullable=True),
        sa.Column("flow_name", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("variant", sa.String(32), nullable=True),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("touch", sa.String(10), nullable=False),
        sa.Column("matched_by", sa.String(8), nullable=False),
        sa.Column("model", sa.String(12), nullable=False),
        sa.Column("touch_at", when, nullable=False),
        sa.Column("order_at", when, nullable=False),
        sa.Column("revenue", sa.Numeric(14, 4), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_attributions_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_attributions_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
            name=op.f("fk_attributions_outbox_id_outbox"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["enrollments.id"],
            name=op.f("fk_attributions_enrollment_id_enrollments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attributions")),
        sa.UniqueConstraint("order_id", name=op.f("uq_attributions_order_id")),
    )
    op.create_index("ix_attributions_enrollment_id", "attributions", ["enrollment_id"])
    op.create_index(
        "ix_enrollments_store_id_flow_name_abandoned_at",
        "enrollments",
        ["store_id", "flow_name", "abandoned_at"],
    )
    op.create_index("ix_attributions_store_id_order_at", "attributions", ["store_id", "order_at"])


def downgrade() -> None:
    op.drop_index("ix_enrollments_store_id_flow_name_abandoned_at", table_name="enrollments")
    op.drop_index("ix_attributions_store_id_order_at", table_name="attributions")
    op.drop_index("ix_attributions_enrollment_id", table_name="attributions")
    op.drop_table("attributions")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("held_channel")
    with op.batch_alter_table("stores") as batch:
        batch.drop_column("measurement")
