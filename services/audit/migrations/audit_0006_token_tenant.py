"""The token replica keeps a tenant-scoped token's tenant (#21), so tenant tokens can read
their own tenant's records.

Revision ID: audit_0006
Revises: audit_0005

NULL for platform roles, and for the tenant tokens granted before this revision (their grant
carried the tenant, but the replica did not keep it): such a token reads nothing here until it
is replaced by a new one.
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0006"
down_revision = "audit_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("tenant", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("tenant")
