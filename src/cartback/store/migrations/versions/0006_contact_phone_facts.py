"""store what a contact's phone number says: country, US state, zones

Revision ID: 0006
Revises: 0005

Existing contacts keep NULL and are read as "not derived yet": the timer parses their number as
before, and the next event that stores the number fills the columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("phone_country", sa.String(2)))
        batch.add_column(sa.Column("phone_region", sa.String(8)))
        batch.add_column(sa.Column("phone_zones", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("phone_zones")
        batch.drop_column("phone_region")
        batch.drop_column("phone_country")
