"""Ingest: an idempotency key remembers whether its event's publish was confirmed.

Revision ID: ingest_0004
Revises: ingest_0003
Create Date: 2026-12-06

``confirmed_at`` is set once the broker confirmed the event's publish. A key whose publish was
not confirmed keeps its event id (the event may or may not have reached the broker): a retry
with the key publishes again under that id, and the consumer's deduplication by event id drops
the second copy if the first arrived. Keys stored before this revision were released when
their publish failed, so each of them stands for a confirmed event.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0004"
down_revision: str | None = "ingest_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE idempotency_keys SET confirmed_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("confirmed_at")
