"""Audit store: sealed personal fields, subject keys, service keys and retention checkpoints.

* ``records.subject_ref`` / ``records.sealed``: a record about a data subject stores its personal
  fields encrypted with that subject's key (crypto-shredding, see
  services/audit/decisions/sealing.py).
* ``subject_keys``: one AES key per subject, found by a blind index of the subject id; deleting
  a row is the erasure.
* ``service_keys``: the generated subject-index and checkpoint-signing keys when none is
  configured, and the fingerprints pinning whichever keys are in use.
* ``checkpoints``: signed retention checkpoints, append-only like the records.
* The DELETE guard on ``records`` now lets through exactly the records a checkpoint covers
  (``seq <= max(checkpoints.last_seq)``), so a retention purge is the only way to delete one;
  UPDATE stays refused.

Revision ID: audit_0002
Revises: audit_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_PG_RECORDS_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.seq <= (SELECT coalesce(max(last_seq), 0) FROM checkpoints) THEN
        RETURN OLD;  -- covered by a signed retention checkpoint: the purge may delete it
    END IF;
    RAISE EXCEPTION 'audit records are append-only (% refused)', TG_OP;
END;
$$
"""
_PG_RECORDS_FUNCTION_0001 = """
CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only (% refused)', TG_OP;
END;
$$
"""
_PG_CHECKPOINTS = (
    """CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit checkpoints are append-only (% refused)', TG_OP;
    END;
    $$""",
    """CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only()""",
)
_SQLITE_DELETE_GUARD = """
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON records
WHEN OLD.seq > (SELECT coalesce(max(last_seq), 0) FROM checkpoints)
BEGIN SELECT RAISE(ABORT, 'audit records are append-only (DELETE refused)'); END
"""
_SQLITE_DELETE_GUARD_0001 = """
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only (DELETE refused)'); END
"""
_SQLITE_CHECKPOINTS = (
    """CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON checkpoints
       BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only (UPDATE refused)'); END""",
    """CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON checkpoints
       BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only (DELETE refused)'); END""",
)


def upgrade() -> None:
    op.add_column("records", sa.Column("subject_ref", sa.String()))
    op.add_column("records", sa.Column("sealed", sa.Text()))
    op.create_index("ix_records_subject_ref", "records", ["subject_ref"])

    op.create_table(
        "subject_keys",
        sa.Column("ref", sa.String(), primary_key=True),
        sa.Column("lookup", sa.String(64), nullable=False, unique=True),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("last_seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
    )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_RECORDS_FUNCTION)
        for statement in _PG_CHECKPOINTS:
            op.execute(statement)
    else:
        op.execute("DROP TRIGGER audit_records_no_delete")
        op.execute(_SQLITE_DELETE_GUARD)
        for statement in _SQLITE_CHECKPOINTS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_RECORDS_FUNCTION_0001)
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_append_only ON checkpoints")
        op.execute("DROP FUNCTION IF EXISTS audit_checkpoints_append_only()")
    else:
        op.execute("DROP TRIGGER audit_records_no_delete")
        op.execute(_SQLITE_DELETE_GUARD_0001)
    op.drop_table("checkpoints")
    op.drop_table("service_keys")
    op.drop_table("subject_keys")
    op.drop_index("ix_records_subject_ref", "records")
    op.drop_column("records", "sealed")
    op.drop_column("records", "subject_ref")
