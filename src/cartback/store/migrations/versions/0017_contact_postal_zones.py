"""store the shipping address's postal code and the zones it settles

Revision ID: 0017
Revises: 0016

Existing contacts keep NULL: their quiet hours use every zone of their state or province, as
before, until an event with a postal code fills the columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("postal_code", sa.String(16)))
        batch.add_column(sa.Column("postal_zones", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("postal_zones")
        batch.drop_column("postal_code")
