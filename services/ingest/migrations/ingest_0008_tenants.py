"""Ingest: tenants (#21) — every endpoint belongs to one tenant; tokens may be tenant-scoped.

Revision ID: ingest_0008
Revises: ingest_0007
Create Date: 2026-12-06

Creates ``tenants`` (``ten_…`` id, name, the platform's own ``external_id`` — unique, usable
wherever a tenant id is — and free-form ``metadata``) with one row, the *default* tenant
(``ten_default``, external id ``default``), and moves every existing endpoint to it
(``endpoints.tenant_id``, NOT NULL). ``tokens.tenant_id`` names the tenant of a
``tenant_admin`` / ``tenant_viewer`` token (NULL for the platform roles); ``tokens.expires_at``
ends a portal session's token. ``portal_codes`` holds the one-time codes of portal sessions
(their SHA-256 only), exchanged once for a session token.

Events without a tenant keep reaching the migrated endpoints only if the deployment sets
``DIHYA_DEFAULT_TENANT=default``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "ingest_0008"
down_revision: str | None = "ingest_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("external_id", name="uq_tenants_external_id"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(tenants, [{"id": "ten_default", "name": "Default",
                              "external_id": "default", "metadata": {},
                              "created_at": now, "updated_at": now}])
    with op.batch_alter_table("endpoints") as batch:
        # the server default moves the existing rows; ingest always writes the column
        batch.add_column(sa.Column("tenant_id", sa.String(64), nullable=False,
                                   server_default="ten_default"))
        batch.create_index("ix_endpoints_tenant_id", ["tenant_id", "id"])
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(64), nullable=True))
        # portal sessions are tokens that expire; NULL: never
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "portal_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("lang", sa.String(8), nullable=True),
        sa.Column("session_seconds", sa.Integer, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("portal_codes")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("tenant_id")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_index("ix_endpoints_tenant_id")
        batch.drop_column("tenant_id")
    op.drop_table("tenants")
