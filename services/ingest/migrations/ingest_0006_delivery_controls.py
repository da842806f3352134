"""Ingest: per-endpoint signature scheme, ed25519 public keys and custom header names
(delivery controls, #22).

Revision ID: ingest_0006
Revises: ingest_0005
Create Date: 2026-12-06

``signature_scheme`` is ``hmac-sha256`` (every existing endpoint keeps it) or ``ed25519``;
``public_keys`` holds an ed25519 endpoint's ``whpk_`` public keys with their overlap deadlines
(JSON, NULL for HMAC endpoints). Public keys are not secret: the signing keys stay in the
signer's keystore. ``header_names`` lists the names of the endpoint's custom headers (JSON,
NULL: none) so the API can show them masked; their values live only in the signer's keystore.
``consecutive_failures`` counts failed attempts since the last delivered one (the operational
events ``endpoint.failing`` / ``endpoint.recovered``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0006"
down_revision: str | None = "ingest_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("signature_scheme", sa.String(16), nullable=False,
                                   server_default="hmac-sha256"))
        batch.add_column(sa.Column("public_keys", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("header_names", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("consecutive_failures", sa.Integer, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("consecutive_failures")
        batch.drop_column("header_names")
        batch.drop_column("public_keys")
        batch.drop_column("signature_scheme")
