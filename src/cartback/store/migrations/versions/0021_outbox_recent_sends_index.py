"""a contact's recent sends, read from the index with their status

Revision ID: 0021
Revises: 0020

- PostgreSQL: `ix_outbox_contact_id_created_at` carries `status` (INCLUDE), so the timer's
  read of a shopper's recent sends filters by status inside the index instead of scanning the
  outbox by status. SQLite keeps the index as it is (no INCLUDE there).
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_NAME = "ix_outbox_contact_id_created_at"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(_NAME, table_name="outbox")
    op.create_index(_NAME, "outbox", ["contact_id", "created_at"], postgresql_include=["status"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(_NAME, table_name="outbox")
    op.create_index(_NAME, "outbox", ["contact_id", "created_at"])
