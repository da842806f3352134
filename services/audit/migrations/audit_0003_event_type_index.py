"""Index records by event type, for the ``event_type`` filter.

Revision ID: audit_0003
Revises: audit_0002
"""

from alembic import op

revision = "audit_0003"
down_revision = "audit_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_records_event_type", "records", ["event_type"])


def downgrade() -> None:
    op.drop_index("ix_records_event_type", "records")
