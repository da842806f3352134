"""Audit store: hash-chained, append-only records and the API-token replica.

Revision ID: audit_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

# Defence in depth for "append-only": the service never updates or deletes a record, and the
# database refuses to as well. Someone with DDL rights can still drop the trigger, which is what
# the hash chain is for.
_PG_FUNCTION = """
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only (% refused)', TG_OP;
END;
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON records
FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()
"""
_SQLITE_TRIGGERS = (
    """CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON records
       BEGIN SELECT RAISE(ABORT, 'audit records are append-only (UPDATE refused)'); END""",
    """CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON records
       BEGIN SELECT RAISE(ABORT, 'audit records are append-only (DELETE refused)'); END""",
)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("fact_id", sa.String(), nullable=False, unique=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("actor", sa.String()),
        sa.Column("event_id", sa.String()),
        sa.Column("event_type", sa.String()),
        sa.Column("endpoint_id", sa.String()),
        sa.Column("delivery_id", sa.String()),
        sa.Column("attempt", sa.BigInteger()),
        sa.Column("url", sa.Text()),
        sa.Column("outcome", sa.String()),
        sa.Column("status_code", sa.BigInteger()),
        sa.Column("duration_ms", sa.Double()),
        sa.Column("error", sa.Text()),
        sa.Column("reason", sa.Text()),
        sa.Column("subject", sa.String()),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    for column in ("event_id", "endpoint_id", "delivery_id", "kind", "occurred_at", "subject"):
        op.create_index(f"ix_records_{column}", "records", [column])

    op.create_table(
        "tokens",
        sa.Column("token_id", sa.String(), primary_key=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
    )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_records_append_only ON records")
        op.execute("DROP FUNCTION IF EXISTS audit_records_append_only()")
    op.drop_table("tokens")
    op.drop_table("records")
