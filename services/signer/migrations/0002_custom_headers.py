"""Keystore: an endpoint's custom headers, encrypted like its secrets (#22).

Revision ID: signer_0002
Revises: signer_0001

One row per endpoint with headers: the Fernet ciphertext of the whole set (bound to the
endpoint id) and the ``issued_at`` of the control message that set it, so a late or duplicate
message never undoes a newer change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "signer_0002"
down_revision: str | None = "signer_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "endpoint_headers",
        sa.Column("endpoint_id", sa.String(128), primary_key=True),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("endpoint_headers")
