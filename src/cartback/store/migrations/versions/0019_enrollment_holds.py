"""enrollment holds: steps that wait for their own time

Revision ID: 0019
Revises: 0018

`enrollments.holds` keeps, per enrollment, the steps a rule held back (SMS quiet hours, a
cooldown, their order on a channel) with the instant each waits for, and the steps that went
out of a hold: `{"held": {"sms1": "2026-11-24T13:00:00+00:00"}, "released": ["sms1"]}`.
NULL is no hold, which is what every existing enrollment has; one deferred under the earlier
rule (the whole enrollment waiting on its `wake_at`) runs on unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("holds", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("holds")
