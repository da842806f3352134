"""POSTs started and not yet reported (``delivery.started`` held aside, outside the chain).

Revision ID: audit_0005
Revises: audit_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0005"
down_revision = "audit_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "started_attempts",
        sa.Column("fact_id", sa.String(), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fact", sa.Text(), nullable=False),
    )
    op.create_index("ix_started_attempts_started_at", "started_attempts", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_started_attempts_started_at", "started_attempts")
    op.drop_table("started_attempts")
