"""Ingest: dead-letter store, held deliveries, parked messages, seen events, endpoint health.

Revision ID: ingest_0002
Revises: ingest_0001
Create Date: 2025-06-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0002"
down_revision: str | None = "ingest_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_delivered_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("disabled_reason", sa.String(64), nullable=True))
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("health_reset_at", sa.DateTime(timezone=True),
                                   nullable=True))
    op.create_table(
        "failed_deliveries",
        sa.Column("delivery_id", sa.String(64), primary_key=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("source_queue", sa.String(255), nullable=True),
        sa.Column("job", sa.JSON, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retried_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_failed_deliveries_endpoint_status", "failed_deliveries",
                    ["endpoint_id", "status", "failed_at"])
    op.create_table(
        "parked_messages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_parked_messages_parked_at", "parked_messages", ["parked_at"])
    op.create_table(
        "seen_events",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_seen_events_seen_at", "seen_events", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_events_seen_at", table_name="seen_events")
    op.drop_table("seen_events")
    op.drop_index("ix_parked_messages_parked_at", table_name="parked_messages")
    op.drop_table("parked_messages")
    op.drop_index("ix_failed_deliveries_endpoint_status", table_name="failed_deliveries")
    op.drop_table("failed_deliveries")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("health_reset_at")
        batch.drop_column("disabled_at")
        batch.drop_column("disabled_reason")
        batch.drop_column("last_delivered_at")
        batch.drop_column("failing_since")
