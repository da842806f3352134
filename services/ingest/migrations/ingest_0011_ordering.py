"""Ingest: ordered (FIFO) endpoints (#22).

Revision ID: ingest_0011
Revises: ingest_0010
Create Date: 2026-12-07

``ordering`` is ``fifo`` for an ordered endpoint, NULL otherwise (every existing endpoint);
``ordering_key`` the dotted path in the event whose value is the ordering key (NULL: the whole
endpoint is one key).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0011"
down_revision: str | None = "ingest_0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("ordering", sa.String(8), nullable=True))
        batch.add_column(sa.Column("ordering_key", sa.String(600), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("ordering_key")
        batch.drop_column("ordering")
