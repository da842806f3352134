"""Ingest: the events-per-second quota of each tenant shared by every replica (#21).

Revision ID: ingest_0009
Revises: ingest_0008
Create Date: 2026-12-07

``tenant_rates`` holds, per tenant that published, the GCRA's *theoretical arrival time*
(``tat``, seconds since the epoch on the database's clock): one row updated by one atomic
statement per event, so N ingest replicas on one PostgreSQL database grant a tenant
DIHYA_INGEST_TENANT_EVENTS_PER_SECOND together, not N times it. Created on SQLite too (one
schema), where a single replica keeps its buckets in memory instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0009"
down_revision: str | None = "ingest_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_rates",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("tat", sa.Float(precision=53), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_rates")
