"""Audit storage (SQLAlchemy Core, SQLite or PostgreSQL): chained records and the token replica.

The record store is append-only by construction: this module has no update or delete for
``records`` (and the migration installs triggers that refuse both). The schema itself is created
by the Alembic revisions in ``migrations/``; the tables below mirror them for queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit import handlers
from services.audit.handlers import Appended, ChainReport, Record, RecordQuery, StoredToken
from shared.contracts import AuditFact, Role, TokenGrant, utcnow
from shared.web import Principal

MIGRATIONS = Path(__file__).parent / "migrations"

WRITER_LOCK_KEY = 0x6469687961756474  # "dihyaudt": PostgreSQL advisory lock of the chain head
"""Held by a batch transaction on PostgreSQL, so that writers in several replicas take turns
and the chain stays linear even then."""

VERIFY_PAGE = 1000


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both backends.

    SQLite has no time zone type: SQLAlchemy stores the wall-clock text and drops the offset,
    so values are converted to UTC first (and text comparison then orders them correctly).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = handlers.utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else handlers.utc(value)


metadata = sa.MetaData()

records = sa.Table(
    "records", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("fact_id", sa.String(), nullable=False, unique=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Column("recorded_at", UTCDateTime(), nullable=False),
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

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("token_id", sa.String(), primary_key=True),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("revoked", sa.Boolean(), nullable=False),
    sa.Column("issued_at", UTCDateTime(), nullable=False),
)

# Reads take datetimes and details as stored (text on SQLite) and parse them in
# handlers.record_from_row: a row tampered into garbage is then reported, not a crash.
_RAW_COLUMNS = [
    sa.type_coerce(c, sa.String()).label(c.name) if c.name in ("occurred_at", "recorded_at")
    else sa.type_coerce(c, sa.Text()).label(c.name) if c.name == "details"
    else c
    for c in records.columns
]

GrantOutcome = Literal["applied", "stale", "conflict"]


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable or busy (retry later), as opposed to a
    problem with the data written (which retrying the same batch would only repeat)."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | TimeoutError)


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # ----------------------------------------------------------------- records

    async def append(self, facts: Sequence[AuditFact]) -> Appended:
        """Store ``facts`` in one transaction, chained after the current head.

        Fact ids already stored (redeliveries) and repeated within the batch are skipped, and
        only inserted records are chained. No ``ON CONFLICT DO NOTHING``: a conflict the check
        did not foresee would silently drop a chained record and break the chain, so it raises
        instead and the batch is retried (and then sees the id as existing).
        """
        async with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(WRITER_LOCK_KEY)))
            existing = await self._existing_ids(conn, {f.id for f in facts})
            head = (await conn.execute(
                sa.select(records.c.seq, records.c.hash).order_by(records.c.seq.desc()).limit(1)
            )).first()
            head_seq, head_hash = (head.seq, head.hash) if head else (0, handlers.GENESIS_HASH)
            result = handlers.append(
                facts, existing_ids=existing, head_seq=head_seq, head_hash=head_hash,
                recorded_at=utcnow(),
            )
            if result.records:
                await conn.execute(records.insert(), [_to_row(r) for r in result.records])
        return result

    @staticmethod
    async def _existing_ids(conn: AsyncConnection, ids: set[str]) -> set[str]:
        found: set[str] = set()
        chunk = sorted(ids)
        for start in range(0, len(chunk), 500):
            rows = await conn.execute(
                sa.select(records.c.fact_id).where(
                    records.c.fact_id.in_(chunk[start:start + 500])
                )
            )
            found.update(r.fact_id for r in rows)
        return found

    async def page(self, query: RecordQuery) -> tuple[list[Record], bool]:
        """One page of records matching ``query`` in ``seq`` order, and whether more follow."""
        stmt = sa.select(*_RAW_COLUMNS).where(records.c.seq > query.after_seq)
        for name, value in query.filters.items():
            stmt = stmt.where(records.c[name] == value)
        if query.since is not None:
            stmt = stmt.where(records.c.occurred_at >= query.since)
        if query.until is not None:
            stmt = stmt.where(records.c.occurred_at < query.until)
        stmt = stmt.order_by(records.c.seq).limit(query.limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        found = [handlers.record_from_row(row) for row in rows[: query.limit]]
        return found, len(rows) > query.limit

    async def verify(self) -> ChainReport:
        """Walk the whole chain in ``seq`` order, a page at a time (bounded memory)."""
        verifier = handlers.ChainVerifier()
        after = 0
        while True:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(
                    sa.select(*_RAW_COLUMNS).where(records.c.seq > after)
                    .order_by(records.c.seq).limit(VERIFY_PAGE)
                )).mappings().all()
            for row in rows:
                try:
                    record = handlers.record_from_row(row)
                except (ValueError, TypeError, KeyError):
                    verifier.feed_unreadable(row["seq"], row["hash"])
                else:
                    verifier.feed(record)
            if len(rows) < VERIFY_PAGE:
                return verifier.report()
            after = rows[-1]["seq"]

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(records)
            )).scalar_one())

    # ----------------------------------------------------------------- tokens

    async def apply_grant(self, grant: TokenGrant) -> GrantOutcome:
        """Upsert the replica row of ``grant``'s token, unless a newer state is already kept."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(
                sa.select(tokens).where(tokens.c.token_id == grant.token_id)
            )).first()
            existing = StoredToken(
                row.token_id, row.role, row.token_hash, row.revoked, row.issued_at
            ) if row else None
            if not handlers.grant_applies(existing, grant):
                return "stale"
            clash = (await conn.execute(
                sa.select(tokens.c.token_id).where(
                    tokens.c.token_hash == grant.token_hash, tokens.c.token_id != grant.token_id
                )
            )).first()
            if clash:
                return "conflict"
            values: dict[str, Any] = {
                "role": grant.role, "token_hash": grant.token_hash, "revoked": grant.revoked,
                "issued_at": grant.issued_at,
            }
            if existing is None:
                await conn.execute(tokens.insert().values(token_id=grant.token_id, **values))
            else:
                await conn.execute(
                    tokens.update().where(tokens.c.token_id == grant.token_id).values(**values)
                )
        return "applied"

    async def lookup(self, token_hash: str) -> Principal | None:
        """The principal of a non-revoked token with this SHA-256 hash, if any."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(tokens.c.token_id, tokens.c.role).where(
                    tokens.c.token_hash == token_hash, tokens.c.revoked.is_(False)
                )
            )).first()
        if row is None or row.role not in get_args(Role):
            return None
        return Principal(token_id=row.token_id, role=row.role)

    # ----------------------------------------------------------------- ops

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.select(1))
        return True


def _to_row(record: Record) -> dict[str, Any]:
    row = {k: v for k, v in record.items() if k != "id"}
    row["fact_id"] = record["id"]
    return row
