"""Ingest: a logged event names its tenant (#21).

Revision ID: ingest_0010
Revises: ingest_0009
Create Date: 2026-12-07

``log_events.tenant_id`` is the tenant an event was published for (NULL: a platform-wide
event), so an event that reached none of its tenant's endpoints (none subscribed) is still in
the tenant's export and removed when the tenant is offboarded. Events logged before this
revision have none: they are found through their deliveries, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0010"
down_revision: str | None = "ingest_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("log_events") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(64), nullable=True))
        batch.create_index("ix_log_events_tenant", ["tenant_id", "id"])


def downgrade() -> None:
    with op.batch_alter_table("log_events") as batch:
        batch.drop_index("ix_log_events_tenant")
        batch.drop_column("tenant_id")
