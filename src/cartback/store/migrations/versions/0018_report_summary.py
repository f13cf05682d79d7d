"""report summary: the flow report's grouped counts per store and day, kept fresh by triggers

Revision ID: 0018
Revises: 0017

- `report_daily`: per store, UTC day of abandonment and grouping (cohort, orders, messages,
  credits) the counts and sums the flow report adds up (services/report_summary.py).
- `report_days`: the days whose summary is built; `report_stale`: days to rebuild.
- Triggers on outbox, enrollments, orders, attributions and contacts mark a built day stale in
  the transaction that changes one of its facts (store/report_triggers.py).
- `ix_enrollments_store_id_abandoned_at`: a day's carts, every flow, for its build.

Nothing is built here: the worker builds every closed day in the background, and
`cartback report rebuild` does it at once. Until a day is built the report reads it live.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cartback.store.tables
from cartback.store import report_triggers

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_UTC = cartback.store.tables.UtcDateTime(timezone=True)
_ID = cartback.store.tables.Id


def upgrade() -> None:
    op.create_index(
        "ix_enrollments_store_id_abandoned_at", "enrollments", ["store_id", "abandoned_at"]
    )
    op.create_table(
        "report_daily",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("flow_name", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=True),
        sa.Column("variant", sa.String(32), nullable=True),
        sa.Column("channel", sa.String(8), nullable=True),
        sa.Column("holdout", sa.Boolean(), nullable=True),
        sa.Column("held_channel", sa.String(8), nullable=True),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in (
                "enrolled",
                "converted",
                "sent",
                "delivered",
                "failed",
                "clicked",
                "segments",
                "recovered",
            )
        ),
        sa.Column("revenue", sa.Numeric(20, 4), nullable=False),
        sa.Column("squares", sa.Numeric(30, 8), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_report_daily_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_daily")),
    )
    op.create_index("ix_report_daily_store_id_day", "report_daily", ["store_id", "day"])
    op.create_table(
        "report_days",
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("built_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["stores.id"],
            name=op.f("fk_report_days_store_id_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("store_id", "day", name=op.f("pk_report_days")),
    )
    op.create_table(
        "report_stale",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("store_id", _ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_stale")),
    )
    op.create_index("ix_report_stale_store_id_day", "report_stale", ["store_id", "day"])
    for statement in report_triggers.create(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in report_triggers.drop(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_index("ix_report_stale_store_id_day", table_name="report_stale")
    op.drop_table("report_stale")
    op.drop_table("report_days")
    op.drop_index("ix_report_daily_store_id_day", table_name="report_daily")
    op.drop_table("report_daily")
    op.drop_index("ix_enrollments_store_id_abandoned_at", table_name="enrollments")
