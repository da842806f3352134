"""Keystore: encrypted endpoint secrets and the newest control message applied per endpoint.

Revision ID: signer_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "signer_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_secrets_endpoint_id", "secrets", ["endpoint_id"])
    op.create_table(
        "secret_versions",
        sa.Column("endpoint_id", sa.String(128), primary_key=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("secret_versions")
    op.drop_index("ix_secrets_endpoint_id", table_name="secrets")
    op.drop_table("secrets")
