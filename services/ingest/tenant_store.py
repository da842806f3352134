"""Tenants' storage (SQLAlchemy Core, async): the ``tenants`` table, resolving a reference
(id or external id) to a tenant, the endpoint count a quota checks, and offboarding (a
tenant's endpoints, stored deliveries, message-log rows and tokens removed in one transaction).

The schema is created by ``migrations/ingest_0008_tenants.py``; the decisions are
:mod:`services.ingest.decisions.tenants`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.ingest.message_log import log_attempts, log_deliveries, log_events
from services.ingest.store import (
    ENDPOINTS_CHANGED,
    endpoints,
    failed_deliveries,
    metadata,
    tokens,
)
from shared.contracts import Role

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("external_id", sa.String(128), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("external_id", name="uq_tenants_external_id"),
)

portal_codes = sa.Table(
    "portal_codes",
    metadata,
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

tenant_rates = sa.Table(
    "tenant_rates",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("tat", sa.Float(precision=53), nullable=False),
)
"""The shared events-per-second quota's state (``migrations/ingest_0009_tenant_rates.py``,
:mod:`services.ingest.tenant_rate`)."""

_UNDELIVERED = ~sa.select(log_deliveries.c.event_id).where(
    log_deliveries.c.event_id == log_events.c.id).exists()
"""A logged event no delivery names (any more)."""

RESOLVE_CACHE = 50_000
"""Tenant references remembered by one ingest (id or external id → tenant id; ~250 bytes
each)."""



def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class TenantRecord:
    id: str
    name: str
    external_id: str | None
    metadata: dict[str, JsonValue]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: sa.Row[Any]) -> TenantRecord:
        m = row._mapping
        return cls(id=m["id"], name=m["name"], external_id=m["external_id"],
                   metadata=dict(m["metadata"] or {}), created_at=_utc(m["created_at"]),
                   updated_at=_utc(m["updated_at"]))


@dataclass(frozen=True)
class Offboarded:
    """What removing a tenant removed."""

    endpoint_ids: list[str]
    token_ids: list[tuple[str, Role, str]]
    """``(token id, role, token hash)`` of the tokens revoked."""
    stored_deliveries: int
    logged_events: int


@dataclass(frozen=True)
class PortalCode:
    """A portal session not yet opened: what its one-time code (kept as its SHA-256) opens."""

    code_hash: str
    tenant_id: str
    role: Role
    lang: str | None
    session_seconds: int
    created_by: str
    created_at: datetime
    expires_at: datetime


class ExternalIdTakenError(Exception):
    """Another tenant already has this external id."""


class TenantStore:
    """Queries over the tenants table; resolving references is cached for ``ttl`` seconds
    (DIHYA_INGEST_ENDPOINT_CACHE_TTL, as the endpoints fan-out reads): no longer, because an
    external id moved to another tenant must not keep reaching the old one. A change made
    through this ingest clears the cache at once."""

    def __init__(self, engine: AsyncEngine, *, ttl: float = 1.0) -> None:
        self.engine = engine
        self._ttl = ttl
        self._resolved: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[str | None]] = {}
        """References being looked up now: the events that find the cache stale meanwhile
        await the same look-up. Without it, every event in flight when a reference's entry
        expired (the whole prefetch, once a second at saturation) asked the database on its
        own — 8-13 % of ingest's samples at saturation went to those identical queries."""

    def forget(self) -> None:
        """Drop the resolution cache (after a change made through this ingest); look-ups in
        flight are not joined any more, and what they find is not cached."""
        self._resolved.clear()
        self._loading.clear()

    @staticmethod
    def _where(ref: str) -> sa.ColumnElement[bool]:
        c = tenants.c
        return (c.id == ref) | (c.external_id == ref)

    async def get(self, ref: str, conn: AsyncConnection | None = None) -> TenantRecord | None:
        """The tenant with id or external id ``ref`` (an id wins over an external id)."""
        query = tenants.select().where(self._where(ref))
        if conn is not None:
            rows = (await conn.execute(query)).all()
        else:
            async with self.engine.connect() as own:
                rows = (await own.execute(query)).all()
        if not rows:
            return None
        return TenantRecord.of(min(rows, key=lambda r: r.id != ref))

    async def resolve(self, ref: str) -> str | None:
        """The tenant id ``ref`` names, or ``None`` if none (cached, see the class)."""
        now = time.monotonic()
        hit = self._resolved.get(ref)
        if hit is not None and now - hit[0] < self._ttl:
            self._resolved.move_to_end(ref)
            return hit[1]
        loading = self._loading.get(ref)
        if loading is None:
            loading = asyncio.ensure_future(self._load(ref, now))
            self._loading[ref] = loading
        # shielded: a cancelled event (its consumer stopping) does not cancel the others'
        return await asyncio.shield(loading)

    async def _load(self, ref: str, now: float) -> str | None:
        try:
            record = await self.get(ref)
        finally:
            mine = self._loading.get(ref) is asyncio.current_task()
            if mine:
                del self._loading[ref]
        found = None if record is None else record.id
        if self._ttl > 0 and mine:  # not after forget(): the answer may predate the change
            self._resolved[ref] = (now, found)
            while len(self._resolved) > RESOLVE_CACHE:
                self._resolved.popitem(last=False)
        return found

    async def insert(self, conn: AsyncConnection, record: TenantRecord) -> None:
        try:
            async with conn.begin_nested():
                await conn.execute(tenants.insert().values(
                    id=record.id, name=record.name, external_id=record.external_id,
                    metadata=record.metadata, created_at=record.created_at,
                    updated_at=record.updated_at))
        except sa.exc.IntegrityError:
            raise ExternalIdTakenError(record.external_id) from None

    async def update(self, conn: AsyncConnection, tenant_id: str, values: dict[str, Any]
                     ) -> TenantRecord | None:
        try:
            async with conn.begin_nested():
                await conn.execute(tenants.update().where(tenants.c.id == tenant_id)
                                   .values(**values))
        except sa.exc.IntegrityError:
            raise ExternalIdTakenError(values.get("external_id")) from None
        self.forget()
        return await self.get(tenant_id, conn)

    async def list(self, *, limit: int, after: str | None) -> list[TenantRecord]:
        query = tenants.select().order_by(tenants.c.id).limit(limit)
        if after:
            query = query.where(tenants.c.id > after)
        async with self.engine.connect() as conn:
            return [TenantRecord.of(r) for r in await conn.execute(query)]

    async def add_code(self, code: PortalCode) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(portal_codes.insert().values(
                code_hash=code.code_hash, tenant_id=code.tenant_id, role=code.role,
                lang=code.lang, session_seconds=code.session_seconds,
                created_by=code.created_by, created_at=code.created_at,
                expires_at=code.expires_at))

    async def use_code(self, conn: AsyncConnection, code_hash: str, now: datetime
                       ) -> PortalCode | None:
        """Spend a one-time code: the session it opens, once, while it is fresh and its
        tenant exists; ``None`` otherwise (unknown, used, expired: the caller cannot tell)."""
        c = portal_codes.c
        result = await conn.execute(portal_codes.update().where(
            (c.code_hash == code_hash) & c.used_at.is_(None) & (c.expires_at > now))
            .values(used_at=now))
        if cast(sa.CursorResult[Any], result).rowcount != 1:
            return None
        row = (await conn.execute(
            portal_codes.select().where(c.code_hash == code_hash))).one()
        if await self.get(row.tenant_id, conn) is None:  # offboarded meanwhile
            return None
        return PortalCode(code_hash=row.code_hash, tenant_id=row.tenant_id,
                          role=cast(Role, row.role), lang=row.lang,
                          session_seconds=row.session_seconds, created_by=row.created_by,
                          created_at=_utc(row.created_at), expires_at=_utc(row.expires_at))

    async def purge_codes(self, older_than: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(portal_codes.delete().where(
                portal_codes.c.expires_at < older_than))

    async def lock(self, conn: AsyncConnection, tenant_id: str) -> bool:
        """Hold the tenant's row until ``conn``'s transaction ends, so what is counted against
        its quota and then inserted is one step on every replica: a second transaction doing
        the same waits here until the first commits, then counts what it committed. A no-op
        ``UPDATE`` rather than ``SELECT … FOR UPDATE`` because SQLite knows no row locks: as
        its first statement, the write takes the database's write lock (and PostgreSQL the
        row's). ``False``: no such tenant (offboarded meanwhile)."""
        result = await conn.execute(tenants.update().where(tenants.c.id == tenant_id)
                                    .values(name=tenants.c.name))
        return cast(sa.CursorResult[Any], result).rowcount == 1

    async def count_endpoints(self, conn: AsyncConnection, tenant_id: str) -> int:
        query = sa.select(sa.func.count()).select_from(endpoints).where(
            endpoints.c.tenant_id == tenant_id)
        return int((await conn.execute(query)).scalar_one())

    async def offboard(self, conn: AsyncConnection, tenant_id: str, now: datetime
                       ) -> Offboarded:
        """Remove the tenant and everything of it ingest keeps: endpoints, their stored
        (failed/held) deliveries, their message-log deliveries and attempts, the logged events
        left with no delivery (their payloads with them), and its tokens (revoked, kept as
        revoked so a grant replay cannot revive them). The caller commits."""
        ep_ids = [r.id for r in await conn.execute(
            sa.select(endpoints.c.id).where(endpoints.c.tenant_id == tenant_id))]
        stored = 0
        events = 0
        for start in range(0, len(ep_ids), 500):
            chunk = ep_ids[start:start + 500]
            event_ids = [r.event_id for r in await conn.execute(
                sa.select(log_deliveries.c.event_id).distinct()
                .where(log_deliveries.c.endpoint_id.in_(chunk)))]
            await conn.execute(log_attempts.delete().where(
                log_attempts.c.endpoint_id.in_(chunk)))
            await conn.execute(log_deliveries.delete().where(
                log_deliveries.c.endpoint_id.in_(chunk)))
            result = await conn.execute(failed_deliveries.delete().where(
                failed_deliveries.c.endpoint_id.in_(chunk)))
            stored += cast(sa.CursorResult[Any], result).rowcount
            events += await self._drop_orphan_events(conn, event_ids)
        events += await self._drop_own_events(conn, tenant_id)
        conn.info[ENDPOINTS_CHANGED] = True
        await conn.execute(endpoints.delete().where(endpoints.c.tenant_id == tenant_id))
        live = [(r.id, cast(Role, r.role), r.token_hash) for r in await conn.execute(
            sa.select(tokens.c.id, tokens.c.role, tokens.c.token_hash).where(
                (tokens.c.tenant_id == tenant_id) & tokens.c.revoked_at.is_(None)))]
        await conn.execute(tokens.update().where(
            (tokens.c.tenant_id == tenant_id) & tokens.c.revoked_at.is_(None))
            .values(revoked_at=now))
        await conn.execute(portal_codes.delete().where(portal_codes.c.tenant_id == tenant_id))
        await conn.execute(tenant_rates.delete().where(tenant_rates.c.tenant_id == tenant_id))
        await conn.execute(tenants.delete().where(tenants.c.id == tenant_id))
        self.forget()
        return Offboarded(endpoint_ids=ep_ids, token_ids=live, stored_deliveries=stored,
                          logged_events=events)

    @staticmethod
    async def _drop_own_events(conn: AsyncConnection, tenant_id: str) -> int:
        """Delete the tenant's own logged events (with their payloads) no delivery names any
        more — those that reached none of its endpoints among them."""
        result = await conn.execute(log_events.delete().where(
            (log_events.c.tenant_id == tenant_id) & _UNDELIVERED))
        return cast(sa.CursorResult[Any], result).rowcount

    @staticmethod
    async def _drop_orphan_events(conn: AsyncConnection, event_ids: Sequence[str]) -> int:
        """Delete the logged events among ``event_ids`` no other endpoint's delivery names
        (a platform-wide event stays for the other tenants)."""
        if not event_ids:
            return 0
        result = await conn.execute(log_events.delete().where(
            log_events.c.id.in_(list(event_ids)) & _UNDELIVERED))
        return cast(sa.CursorResult[Any], result).rowcount
