"""Records carry their tenant (#21), indexed for the ``tenant`` filter.

Revision ID: audit_0004
Revises: audit_0003

NULL on every record written before tenants (and on platform-wide ones): a null ``tenant`` is
left out of the hashed JSON, so the existing chain verifies unchanged.
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0004"
down_revision = "audit_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (no batch copy): SQLite keeps the append-only triggers
    op.add_column("records", sa.Column("tenant", sa.String(), nullable=True))
    op.create_index("ix_records_tenant", "records", ["tenant", "seq"])


def downgrade() -> None:
    op.drop_index("ix_records_tenant", "records")
    op.drop_column("records", "tenant")
