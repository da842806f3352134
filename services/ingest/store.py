"""Ingest's own storage (SQLAlchemy Core, async): endpoints, idempotency keys, API tokens.

The schema is created by the Alembic revisions in ``migrations/``; the tables here mirror them
for queries. No webhook secret and no token is ever stored: a secret goes to the signer only,
a token is kept as its SHA-256 (what :func:`shared.web.hash_token` looks up).

Timestamps are always written in UTC. SQLite keeps them without an offset, so rows read back
are normalised to aware UTC datetimes (:func:`_utc`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.ingest.handlers import Endpoint, EndpointStatus, key_is_fresh
from shared.contracts import Role
from shared.web import Principal

metadata = sa.MetaData()

endpoints = sa.Table(
    "endpoints",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("events", sa.JSON, nullable=False),
    sa.Column("description", sa.String(1024), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_endpoints_status", "status"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("description", sa.String(1024), nullable=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    status: EndpointStatus
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: sa.Row[Any]) -> EndpointRecord:
        m = row._mapping
        return cls(id=m["id"], url=m["url"], events=tuple(m["events"]),
                   description=m["description"], status=m["status"],
                   created_at=_utc(m["created_at"]), updated_at=_utc(m["updated_at"]))

    def target(self) -> Endpoint:
        return Endpoint(id=self.id, url=self.url, events=self.events, status=self.status)


@dataclass(frozen=True)
class TokenRecord:
    id: str
    role: Role
    description: str | None
    token_hash: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> TokenRecord:
        m = row._mapping
        revoked = m["revoked_at"]
        return cls(id=m["id"], role=m["role"], description=m["description"],
                   token_hash=m["token_hash"], created_at=_utc(m["created_at"]),
                   revoked_at=None if revoked is None else _utc(revoked))


@dataclass(frozen=True)
class Claim:
    """The event an idempotency key already stands for."""

    event_id: str
    event_type: str


class Store:
    """Async queries over one engine. Methods taking ``conn`` run inside the caller's
    transaction (see :meth:`transaction`), so a control message can be published — and its
    confirm awaited — before the row is committed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    # -- endpoints ------------------------------------------------------------------------

    async def insert_endpoint(self, conn: AsyncConnection, record: EndpointRecord) -> None:
        await conn.execute(endpoints.insert().values(
            id=record.id, url=record.url, events=list(record.events),
            description=record.description, status=record.status,
            created_at=record.created_at, updated_at=record.updated_at))

    async def get_endpoint(self, endpoint_id: str, conn: AsyncConnection | None = None
                           ) -> EndpointRecord | None:
        query = endpoints.select().where(endpoints.c.id == endpoint_id)
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(query)).first()
        return None if row is None else EndpointRecord.of(row)

    async def list_endpoints(self, *, limit: int, after: str | None) -> list[EndpointRecord]:
        query = endpoints.select().order_by(endpoints.c.id).limit(limit)
        if after:
            query = query.where(endpoints.c.id > after)
        async with self.engine.connect() as conn:
            return [EndpointRecord.of(r) for r in await conn.execute(query)]

    async def update_endpoint(self, conn: AsyncConnection, endpoint_id: str,
                              changes: dict[str, Any]) -> EndpointRecord | None:
        values = dict(changes)
        if "events" in values:
            values["events"] = list(values["events"])
        result = await conn.execute(
            endpoints.update().where(endpoints.c.id == endpoint_id).values(**values))
        if cast(sa.CursorResult[Any], result).rowcount == 0:
            return None
        return await self.get_endpoint(endpoint_id, conn)

    async def delete_endpoint(self, conn: AsyncConnection, endpoint_id: str) -> bool:
        result = await conn.execute(endpoints.delete().where(endpoints.c.id == endpoint_id))
        return cast(sa.CursorResult[Any], result).rowcount > 0

    async def enabled_endpoints(self) -> list[Endpoint]:
        """Every enabled endpoint: fan-out filters them by pattern in Python (topic patterns
        cannot be matched portably in SQL)."""
        query = (sa.select(endpoints.c.id, endpoints.c.url, endpoints.c.events)
                 .where(endpoints.c.status == "enabled").order_by(endpoints.c.id))
        async with self.engine.connect() as conn:
            return [Endpoint(id=r.id, url=r.url, events=tuple(r.events))
                    for r in await conn.execute(query)]

    # -- idempotency keys -----------------------------------------------------------------

    async def claim_key(self, scope: str, key: str, *, event_id: str, event_type: str,
                        now: datetime, window_seconds: int) -> Claim | None:
        """Claim ``key`` for ``event_id``; return ``None`` if claimed, else the event that
        already holds it inside the window.

        Insert first and let the unique constraint arbitrate, so two concurrent requests with
        the same key (even on two replicas sharing PostgreSQL) cannot both win. A key found
        but older than the window is replaced.
        """
        where = (idempotency_keys.c.scope == scope) & (idempotency_keys.c.key == key)
        for _ in range(5):
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(idempotency_keys.insert().values(
                        scope=scope, key=key, event_id=event_id, event_type=event_type,
                        created_at=now))
                return None
            except IntegrityError:
                pass
            async with self.engine.begin() as conn:
                row = (await conn.execute(
                    sa.select(idempotency_keys.c.event_id, idempotency_keys.c.event_type,
                              idempotency_keys.c.created_at).where(where))).first()
                if row is None:
                    continue  # released meanwhile (its publish failed): try to claim again
                if key_is_fresh(_utc(row.created_at), now, window_seconds):
                    return Claim(event_id=row.event_id, event_type=row.event_type)
                await conn.execute(idempotency_keys.delete().where(
                    where & (idempotency_keys.c.event_id == row.event_id)))
        raise RuntimeError("idempotency key contention did not settle")

    async def release_key(self, scope: str, key: str, event_id: str) -> None:
        """Forget a claim whose event could not be published, so a retry can succeed."""
        async with self.engine.begin() as conn:
            await conn.execute(idempotency_keys.delete().where(
                (idempotency_keys.c.scope == scope) & (idempotency_keys.c.key == key)
                & (idempotency_keys.c.event_id == event_id)))

    async def purge_keys(self, older_than: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                idempotency_keys.delete().where(idempotency_keys.c.created_at < older_than))
        return cast(sa.CursorResult[Any], result).rowcount

    # -- tokens ---------------------------------------------------------------------------

    async def insert_token(self, conn: AsyncConnection, record: TokenRecord) -> None:
        await conn.execute(tokens.insert().values(
            id=record.id, role=record.role, description=record.description,
            token_hash=record.token_hash, created_at=record.created_at,
            revoked_at=record.revoked_at))

    async def list_tokens(self, *, limit: int, after: str | None) -> list[TokenRecord]:
        query = tokens.select().order_by(tokens.c.id).limit(limit)
        if after:
            query = query.where(tokens.c.id > after)
        async with self.engine.connect() as conn:
            return [TokenRecord.of(r) for r in await conn.execute(query)]

    async def revoke_token(self, conn: AsyncConnection, token_id: str, now: datetime
                           ) -> TokenRecord | None:
        """Mark the token revoked (keeping the first revocation time); ``None`` if unknown."""
        await conn.execute(tokens.update()
                           .where((tokens.c.id == token_id) & tokens.c.revoked_at.is_(None))
                           .values(revoked_at=now))
        row = (await conn.execute(tokens.select().where(tokens.c.id == token_id))).first()
        return None if row is None else TokenRecord.of(row)

    async def principal(self, token_hash: str) -> Principal | None:
        """The principal of a live (not revoked) token, by hash."""
        query = sa.select(tokens.c.id, tokens.c.role).where(
            (tokens.c.token_hash == token_hash) & tokens.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else Principal(token_id=row.id, role=row.role)
