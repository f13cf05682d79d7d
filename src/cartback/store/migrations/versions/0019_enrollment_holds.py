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


# Plain ALTER TABLE on both backends, never SQLite's batch copy-and-rename: the report
# summary's triggers (0018) name `enrollments`, and SQLite refuses to rename a table under them.
def upgrade() -> None:
    op.add_column("enrollments", sa.Column("holds", sa.JSON(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE enrollments DROP COLUMN holds")
    else:
        op.drop_column("enrollments", "holds")
