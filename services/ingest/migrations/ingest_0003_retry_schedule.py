"""Ingest: an endpoint's own retry schedule.

Revision ID: ingest_0003
Revises: ingest_0002
Create Date: 2025-06-10

``retry_schedule_ms`` holds the delays in milliseconds as a JSON array (``[]``: a single
attempt); SQL NULL means the deployment's schedule, so every existing endpoint keeps the
behaviour it had.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0003"
down_revision: str | None = "ingest_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("retry_schedule_ms", sa.JSON(none_as_null=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("retry_schedule_ms")
