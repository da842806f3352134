"""Ingest: per-endpoint rate limit (delivery controls, #22).

Revision ID: ingest_0007
Revises: ingest_0006
Create Date: 2026-12-06

``rate_limit`` holds an endpoint's limit as JSON ``{"per_second": r, "burst": b}``; NULL (every
existing endpoint) means not limited. Ingest copies it into each delivery job; the deliverer
paces the endpoint's deliveries through its paced queue.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0007"
down_revision: str | None = "ingest_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("rate_limit", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("rate_limit")
