"""Ingest: the message log — every event (payload while retained), delivery and attempt.

Revision ID: ingest_0005
Revises: ingest_0004
Create Date: 2026-12-06

``log_events.payload`` is personal data: purged after DIHYA_INGEST_PAYLOAD_RETENTION_DAYS and
erased with its ``subject`` (the event's ``data.user_id``). Existing deployments start with an
empty log; deliveries attempted later get a row from their first attempt seen.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0005"
down_revision: str | None = "ingest_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_events",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lang", sa.String(8), nullable=True),
        sa.Column("subject", sa.String(512), nullable=True),
        sa.Column("payload", sa.JSON(none_as_null=True), nullable=True),
    )
    op.create_index("ix_log_events_received_at", "log_events", ["received_at", "id"])
    op.create_index("ix_log_events_type_received_at", "log_events",
                    ["event_type", "received_at"])
    op.create_index("ix_log_events_subject", "log_events", ["subject"])
    op.create_table(
        "log_deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_log_deliveries_event", "log_deliveries", ["event_id"])
    op.create_index("ix_log_deliveries_endpoint_created", "log_deliveries",
                    ["endpoint_id", "created_at"])
    op.create_index("ix_log_deliveries_status_created", "log_deliveries",
                    ["status", "created_at"])
    op.create_index("ix_log_deliveries_created", "log_deliveries", ["created_at", "id"])
    op.create_table(
        "log_attempts",
        sa.Column("delivery_id", sa.String(64), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("request_headers", sa.JSON, nullable=False),
        sa.Column("response_headers", sa.JSON, nullable=False),
        sa.Column("response_excerpt", sa.Text, nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
    )
    op.create_index("ix_log_attempts_endpoint_at", "log_attempts", ["endpoint_id", "at"])
    op.create_index("ix_log_attempts_at", "log_attempts", ["at"])


def downgrade() -> None:
    op.drop_table("log_attempts")
    op.drop_table("log_deliveries")
    op.drop_table("log_events")
