"""index a contact's recent sends

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_contact_id_created_at", "outbox", ["contact_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_contact_id_created_at", table_name="outbox")
