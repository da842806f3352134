"""Ingest's own storage (SQLAlchemy Core, async): endpoints (with their health), idempotency
keys, API tokens, the dead-letter store (failed and held deliveries), parked unreadable
messages, and the ids of events already fanned out (AMQP deduplication).

The schema is created by the Alembic revisions in ``migrations/``; the tables here mirror them
for queries. No webhook secret and no token is ever stored: a secret goes to the signer only,
a token is kept as its SHA-256 (what :func:`shared.web.hash_token` looks up).

Timestamps are always written in UTC. SQLite keeps them without an offset, so rows read back
are normalised to aware UTC datetimes (:func:`_utc`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
import structlog
from pydantic import JsonValue
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.ingest.decisions import (
    DeadLetter,
    DeliveryStatus,
    Endpoint,
    EndpointStatus,
    Health,
    HeldJob,
    absorb,
    key_is_fresh,
)
from shared.contracts import DeliveryJob, Ordering, RateLimit, Role
from shared.db import (
    DirectPostgres,
    DirectSQLite,
    direct_postgres,
    direct_sqlite,
    sqlite_timestamp,
)
from shared.web import Principal

log = structlog.get_logger("dihya.ingest.store")

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
    sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("disabled_reason", sa.String(64), nullable=True),
    sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("health_reset_at", sa.DateTime(timezone=True), nullable=True),
    # the endpoint's own retry delays in ms (JSON array, [] = one attempt); NULL = default
    sa.Column("retry_schedule_ms", sa.JSON(none_as_null=True), nullable=True),
    # delivery controls (#22): how deliveries are signed; ed25519 public keys shown to the owner
    sa.Column("signature_scheme", sa.String(16), nullable=False,
              server_default="hmac-sha256"),
    # JSON [[whpk_, valid_until ISO or null], …], current first; NULL for hmac-sha256
    sa.Column("public_keys", sa.JSON(none_as_null=True), nullable=True),
    # names of its custom headers (values only in the signer's keystore); NULL: none
    sa.Column("header_names", sa.JSON(none_as_null=True), nullable=True),
    # failed attempts since the last delivered one (endpoint.failing / endpoint.recovered)
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    # its rate limit, JSON {"per_second": r, "burst": b}; NULL: not limited
    sa.Column("rate_limit", sa.JSON(none_as_null=True), nullable=True),
    # its tenant (#21); the migration moved existing endpoints to the default tenant
    sa.Column("tenant_id", sa.String(64), nullable=False, server_default="ten_default"),
    # ordered endpoints (#22): "fifo" or NULL; the dotted path of the ordering key, or NULL
    sa.Column("ordering", sa.String(8), nullable=True),
    sa.Column("ordering_key", sa.String(600), nullable=True),
    sa.Index("ix_endpoints_status", "status"),
    sa.Index("ix_endpoints_tenant_id", "tenant_id", "id"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # NULL until the broker confirmed the event (ingest_0004): a retry then publishes again
    sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
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
    # the tenant of a tenant_admin / tenant_viewer token; NULL for platform roles
    sa.Column("tenant_id", sa.String(64), nullable=True),
    # a portal session's end; NULL: never
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
)


failed_deliveries = sa.Table(
    "failed_deliveries",
    metadata,
    sa.Column("delivery_id", sa.String(64), primary_key=True),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("error", sa.String(2000), nullable=True),
    sa.Column("source_queue", sa.String(255), nullable=True),
    sa.Column("job", sa.JSON, nullable=False),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("retried_by", sa.String(64), nullable=True),
    sa.Index("ix_failed_deliveries_endpoint_status", "endpoint_id", "status", "failed_at"),
)

parked_messages = sa.Table(
    "parked_messages",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("queue", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("error", sa.String(2000), nullable=True),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_parked_messages_parked_at", "parked_at"),
)

seen_events = sa.Table(
    "seen_events",
    metadata,
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_seen_events_seen_at", "seen_at"),
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _schedule(value: Any) -> tuple[int, ...] | None:
    """A stored retry schedule (JSON array of ms, or NULL) as a tuple."""
    return None if value is None else tuple(int(ms) for ms in value)


def _rate_limit(value: Any) -> RateLimit | None:
    return None if value is None else RateLimit.model_validate(value)


def _rate_limit_column(value: RateLimit | None) -> dict[str, Any] | None:
    return None if value is None else value.model_dump(mode="json")


def _schedule_column(value: Sequence[int] | None) -> list[int] | None:
    return None if value is None else list(value)


def _insert(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which knows ``ON CONFLICT`` (both backends speak it)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _public_keys(raw: Any) -> tuple[tuple[str, datetime | None], ...] | None:
    if raw is None:
        return None
    return tuple((str(key), None if until is None else datetime.fromisoformat(until))
                 for key, until in raw)


def _public_keys_column(keys: tuple[tuple[str, datetime | None], ...] | None) -> Any:
    if keys is None:
        return None
    return [[key, None if until is None else until.isoformat()] for key, until in keys]


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    status: EndpointStatus
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None = None
    last_delivered_at: datetime | None = None
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    health_reset_at: datetime | None = None
    retry_schedule_ms: tuple[int, ...] | None = None
    """Its own retry delays in milliseconds (``()``: one attempt); ``None``: the default."""
    signature_scheme: str = "hmac-sha256"
    public_keys: tuple[tuple[str, datetime | None], ...] | None = None
    """ed25519: ``(whpk_, valid_until)`` pairs, current (``None``) first."""
    header_names: tuple[str, ...] = ()
    consecutive_failures: int = 0
    rate_limit: RateLimit | None = None
    tenant_id: str = "ten_default"
    ordering: Ordering | None = None
    ordering_key: str | None = None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> EndpointRecord:
        m = row._mapping
        return cls(id=m["id"], url=m["url"], events=tuple(m["events"]),
                   description=m["description"], status=m["status"],
                   created_at=_utc(m["created_at"]), updated_at=_utc(m["updated_at"]),
                   failing_since=_utc_or_none(m["failing_since"]),
                   last_delivered_at=_utc_or_none(m["last_delivered_at"]),
                   disabled_reason=m["disabled_reason"],
                   disabled_at=_utc_or_none(m["disabled_at"]),
                   health_reset_at=_utc_or_none(m["health_reset_at"]),
                   retry_schedule_ms=_schedule(m["retry_schedule_ms"]),
                   signature_scheme=m["signature_scheme"],
                   public_keys=_public_keys(m["public_keys"]),
                   header_names=tuple(m["header_names"] or ()),
                   consecutive_failures=m["consecutive_failures"],
                   rate_limit=_rate_limit(m["rate_limit"]), tenant_id=m["tenant_id"],
                   ordering=m["ordering"], ordering_key=m["ordering_key"])

    def target(self) -> Endpoint:
        return Endpoint(id=self.id, url=self.url, events=self.events, status=self.status,
                        disabled_reason=self.disabled_reason,
                        retry_schedule_ms=self.retry_schedule_ms,
                        rate_limit=self.rate_limit, tenant_id=self.tenant_id,
                        ordering=self.ordering, ordering_key=self.ordering_key)

    @property
    def health(self) -> Health:
        return Health(self.status, self.failing_since, self.last_delivered_at,
                      self.health_reset_at, self.consecutive_failures)


@dataclass(frozen=True)
class DeliveryRecord:
    """A stored delivery: failed (parked), held (endpoint disabled) or retried."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    reason: str
    error: str | None
    source_queue: str | None
    job: DeliveryJob
    failed_at: datetime
    updated_at: datetime
    retried_at: datetime | None
    retried_by: str | None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> DeliveryRecord:
        m = row._mapping
        return cls(delivery_id=m["delivery_id"], endpoint_id=m["endpoint_id"],
                   event_id=m["event_id"], event_type=m["event_type"], status=m["status"],
                   reason=m["reason"], error=m["error"], source_queue=m["source_queue"],
                   job=DeliveryJob.model_validate(m["job"]), failed_at=_utc(m["failed_at"]),
                   updated_at=_utc(m["updated_at"]), retried_at=_utc_or_none(m["retried_at"]),
                   retried_by=m["retried_by"])


@dataclass(frozen=True)
class ParkedRecord:
    id: str
    queue: str
    reason: str
    error: str | None
    headers: dict[str, JsonValue]
    body: bytes
    parked_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    id: str
    role: Role
    description: str | None
    token_hash: str
    created_at: datetime
    revoked_at: datetime | None
    tenant_id: str | None = None
    expires_at: datetime | None = None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> TokenRecord:
        m = row._mapping
        revoked = m["revoked_at"]
        return cls(id=m["id"], role=m["role"], description=m["description"],
                   token_hash=m["token_hash"], created_at=_utc(m["created_at"]),
                   revoked_at=None if revoked is None else _utc(revoked),
                   tenant_id=m["tenant_id"], expires_at=_utc_or_none(m["expires_at"]))


@dataclass(frozen=True)
class Claim:
    """The event an idempotency key already stands for."""

    event_id: str
    event_type: str
    confirmed: bool = True
    """False while the broker has not confirmed the event's publish (it failed, or is still
    in flight): the event may or may not have been accepted."""
    claimed_at: datetime | None = None


ENDPOINTS_CHANGED = "dihya_endpoints_changed"
"""Connection-info flag: this transaction changed endpoints (the fan-out cache is stale)."""


class Store:
    """Async queries over one engine. Methods taking ``conn`` run inside the caller's
    transaction (see :meth:`transaction`), so a control message can be published — and its
    confirm awaited — before the row is committed."""

    def __init__(self, engine: AsyncEngine, *, endpoint_cache_ttl: float = 1.0) -> None:
        self.engine = engine
        self._cache_ttl = endpoint_cache_ttl
        self._generation = 0
        self._cached: tuple[int, float, list[Endpoint]] | None = None
        self._by_tenant: tuple[list[Endpoint], dict[str, list[Endpoint]]] | None = None
        self._reload = asyncio.Lock()
        # the per-event statements (seen events, tokens) go to SQLite directly; on
        # PostgreSQL the seen events go through plain asyncpg
        self._direct = direct_sqlite(engine)
        self._pg = direct_postgres(engine)

    @property
    def direct(self) -> DirectSQLite | DirectPostgres | None:
        """The direct writer of the per-message statements: plain ``sqlite3`` on SQLite (the
        message log's writes share it, so they and the seen-event records take turns on one
        thread and one connection instead of contending for SQLite's write lock), plain
        ``asyncpg`` on PostgreSQL (:class:`shared.db.DirectPostgres`)."""
        return self._direct if self._direct is not None else self._pg

    async def close(self) -> None:
        """Release the database connections (the engine's and the direct ones)."""
        if self._direct is not None:
            await self._direct.close()
        if self._pg is not None:
            await self._pg.close()
        await self.engine.dispose()

    def _direct_rows(self, sql: str, values: Sequence[str]) -> list[Any] | None:
        """``sql`` (its ``IN ({})`` filled with one ``?`` per value) on the direct reader:
        the rows, or None when there is no reader or SQLite was busy (then use the engine).
        The SQL mirrors the engine's query next to each call; the tests hold them equal."""
        if self._direct is None:
            return None
        try:
            return self._direct.rows(sql.format(",".join("?" * len(values))), values)
        except sqlite3.OperationalError as exc:
            log.debug("direct_read_failed", error=str(exc))
            return None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn
            changed = conn.info.pop(ENDPOINTS_CHANGED, False)
        if changed:  # committed: drop the endpoints cached for fan-out
            self._generation += 1

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    # -- endpoints ------------------------------------------------------------------------

    async def insert_endpoint(self, conn: AsyncConnection, record: EndpointRecord) -> None:
        conn.info[ENDPOINTS_CHANGED] = True
        await conn.execute(endpoints.insert().values(
            id=record.id, url=record.url, events=list(record.events),
            description=record.description, status=record.status,
            created_at=record.created_at, updated_at=record.updated_at,
            retry_schedule_ms=_schedule_column(record.retry_schedule_ms),
            signature_scheme=record.signature_scheme,
            public_keys=_public_keys_column(record.public_keys),
            header_names=list(record.header_names) or None,
            rate_limit=_rate_limit_column(record.rate_limit), tenant_id=record.tenant_id,
            ordering=record.ordering, ordering_key=record.ordering_key))

    async def get_endpoint(self, endpoint_id: str, conn: AsyncConnection | None = None
                           ) -> EndpointRecord | None:
        query = endpoints.select().where(endpoints.c.id == endpoint_id)
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(query)).first()
        return None if row is None else EndpointRecord.of(row)

    async def list_endpoints(self, *, limit: int, after: str | None,
                             tenant: str | None = None) -> list[EndpointRecord]:
        """Endpoints by id; ``tenant``: only that tenant's."""
        query = endpoints.select().order_by(endpoints.c.id).limit(limit)
        if after:
            query = query.where(endpoints.c.id > after)
        if tenant is not None:
            query = query.where(endpoints.c.tenant_id == tenant)
        async with self.engine.connect() as conn:
            return [EndpointRecord.of(r) for r in await conn.execute(query)]

    async def update_endpoint(self, conn: AsyncConnection, endpoint_id: str,
                              changes: dict[str, Any]) -> EndpointRecord | None:
        values = dict(changes)
        if "events" in values:
            values["events"] = list(values["events"])
        if "retry_schedule_ms" in values:
            values["retry_schedule_ms"] = _schedule_column(values["retry_schedule_ms"])
        if "header_names" in values:
            values["header_names"] = list(values["header_names"]) or None
        if "rate_limit" in values:
            values["rate_limit"] = _rate_limit_column(values["rate_limit"])
        if "public_keys" in values:
            values["public_keys"] = _public_keys_column(values["public_keys"])
        conn.info[ENDPOINTS_CHANGED] = True
        result = await conn.execute(
            endpoints.update().where(endpoints.c.id == endpoint_id).values(**values))
        if cast(sa.CursorResult[Any], result).rowcount == 0:
            return None
        return await self.get_endpoint(endpoint_id, conn)

    async def delete_endpoint(self, conn: AsyncConnection, endpoint_id: str) -> bool:
        conn.info[ENDPOINTS_CHANGED] = True
        result = await conn.execute(endpoints.delete().where(endpoints.c.id == endpoint_id))
        return cast(sa.CursorResult[Any], result).rowcount > 0

    async def subscribers(self) -> list[Endpoint]:
        """Every endpoint, enabled or not: fan-out filters them by pattern in Python (topic
        patterns cannot be matched portably in SQL); the disabled ones get held deliveries.

        Cached for ``endpoint_cache_ttl`` seconds, since every event needs the list: a change
        committed through this store is seen by the next event at once; one made by another
        ingest replica within the TTL. A load that raced with a commit is not cached.
        """
        cached = self._cached
        if (cached is not None and cached[0] == self._generation
                and time.monotonic() - cached[1] < self._cache_ttl):
            return cached[2]
        async with self._reload:  # one load for the many events that found the cache stale
            cached = self._cached
            if (cached is not None and cached[0] == self._generation
                    and time.monotonic() - cached[1] < self._cache_ttl):
                return cached[2]
            generation, loaded_at = self._generation, time.monotonic()
            found = await self._load_subscribers()
            if generation == self._generation and self._cache_ttl > 0:
                self._cached = (generation, loaded_at, found)
            return found

    async def _load_subscribers(self) -> list[Endpoint]:
        query = (sa.select(endpoints.c.id, endpoints.c.url, endpoints.c.events,
                           endpoints.c.status, endpoints.c.disabled_reason,
                           endpoints.c.retry_schedule_ms, endpoints.c.rate_limit,
                           endpoints.c.tenant_id, endpoints.c.ordering,
                           endpoints.c.ordering_key)
                 .order_by(endpoints.c.id))
        async with self.engine.connect() as conn:
            return [Endpoint(id=r.id, url=r.url, events=tuple(r.events), status=r.status,
                             disabled_reason=r.disabled_reason,
                             retry_schedule_ms=_schedule(r.retry_schedule_ms),
                             rate_limit=_rate_limit(r.rate_limit), tenant_id=r.tenant_id,
                             ordering=r.ordering, ordering_key=r.ordering_key)
                    for r in await conn.execute(query)]

    async def subscribers_of(self, tenant: str | None) -> list[Endpoint]:
        """:meth:`subscribers` of one tenant (``None``: every tenant's), from an index built
        once per load of the cache: an event's fan-out looks at its own tenant's endpoints
        only, however many tenants there are."""
        every = await self.subscribers()
        if tenant is None:
            return every
        index = self._by_tenant
        if index is None or index[0] is not every:
            grouped: dict[str, list[Endpoint]] = {}
            for ep in every:
                grouped.setdefault(ep.tenant_id, []).append(ep)
            index = self._by_tenant = (every, grouped)
        return index[1].get(tenant, [])

    async def set_health(self, conn: AsyncConnection, endpoint_id: str, old: Health,
                         new: Health, *, disabled_reason: str | None, now: datetime) -> bool:
        """Compare-and-set the endpoint's health: write ``new`` only if the row still holds
        ``old``. Several consumers and replicas judge concurrently; exactly one of them turns
        an endpoint off, and only that one announces it."""
        c = endpoints.c
        values: dict[str, Any] = {"status": new.status,
                                  "failing_since": _utc_or_none(new.failing_since),
                                  "last_delivered_at": _utc_or_none(new.last_delivered_at),
                                  "consecutive_failures": new.failures}
        if new.status == "disabled" and old.status != "disabled":
            values.update(disabled_reason=disabled_reason, disabled_at=now, updated_at=now)
        if new.status != old.status:
            conn.info[ENDPOINTS_CHANGED] = True
        result = await conn.execute(
            endpoints.update()
            .where((c.id == endpoint_id) & (c.status == old.status)
                   & c.failing_since.is_not_distinct_from(old.failing_since)
                   & c.last_delivered_at.is_not_distinct_from(old.last_delivered_at)
                   & (c.consecutive_failures == old.failures))
            .values(**values))
        return cast(sa.CursorResult[Any], result).rowcount == 1

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
                              idempotency_keys.c.created_at, idempotency_keys.c.confirmed_at)
                    .where(where))).first()
                if row is None:
                    continue  # purged meanwhile: try to claim again
                if key_is_fresh(_utc(row.created_at), now, window_seconds):
                    return Claim(event_id=row.event_id, event_type=row.event_type,
                                 confirmed=row.confirmed_at is not None,
                                 claimed_at=_utc(row.created_at))
                await conn.execute(idempotency_keys.delete().where(
                    where & (idempotency_keys.c.event_id == row.event_id)))
        raise RuntimeError("idempotency key contention did not settle")

    async def find_key(self, scope: str, key: str) -> Claim | None:
        """The event ``key`` stands for, whatever its age (``None`` if purged)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(idempotency_keys.c.event_id, idempotency_keys.c.event_type,
                          idempotency_keys.c.created_at, idempotency_keys.c.confirmed_at)
                .where((idempotency_keys.c.scope == scope)
                       & (idempotency_keys.c.key == key)))).first()
        if row is None:
            return None
        return Claim(event_id=row.event_id, event_type=row.event_type,
                     confirmed=row.confirmed_at is not None, claimed_at=_utc(row.created_at))

    async def confirm_key(self, scope: str, key: str, event_id: str, now: datetime) -> None:
        """Record that the broker confirmed the event ``key`` stands for.

        There is no release: a claim whose publish was not confirmed keeps its event id, so a
        retry publishes the same id again (the event may have reached the broker after all,
        and a new id would make it a duplicate no receiver can recognise)."""
        async with self.engine.begin() as conn:
            await conn.execute(idempotency_keys.update().where(
                (idempotency_keys.c.scope == scope) & (idempotency_keys.c.key == key)
                & (idempotency_keys.c.event_id == event_id)).values(confirmed_at=now))

    async def purge_keys(self, older_than: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                idempotency_keys.delete().where(idempotency_keys.c.created_at < older_than))
        return cast(sa.CursorResult[Any], result).rowcount

    # -- dead-letter store ----------------------------------------------------------------

    async def record_failure(self, dead: DeadLetter, *, queue: str, now: datetime
                             ) -> DeliveryJob:
        """Store a parked delivery (status ``failed``); return the job as stored.

        ``failed_at`` is when its last attempt failed (the time of parking, ``now``, if it was
        never attempted), so a backlog taken in late keeps the real failure times.

        One row per delivery id: a delivery that fails again after a manual retry updates its
        row, and its history keeps the attempts of every episode. A redelivered copy of the same
        parked message changes nothing but the time (idempotent).
        """
        job = dead.job
        c = failed_deliveries.c
        async with self.engine.begin() as conn:
            row = (await conn.execute(
                sa.select(c.job).where(c.delivery_id == job.delivery_id).with_for_update()
            )).first()
            stored = None if row is None else DeliveryJob.model_validate(row.job)
            kept = absorb(stored, job)
            failed_at = _utc(max((r.at for r in job.history), default=now))
            values = {"endpoint_id": kept.endpoint_id, "event_id": kept.event.id or "",
                      "event_type": kept.event.event, "status": "failed",
                      "reason": dead.reason, "error": dead.error, "source_queue": queue,
                      "job": kept.model_dump(mode="json"), "failed_at": failed_at,
                      "updated_at": now}
            stmt = _insert(conn, failed_deliveries).values(delivery_id=kept.delivery_id,
                                                           **values)
            await conn.execute(stmt.on_conflict_do_update(index_elements=[c.delivery_id],
                                                          set_=values))
        return kept

    async def hold(self, held: Sequence[HeldJob], *, now: datetime) -> int:
        """Store deliveries for disabled endpoints (status ``held``); one row per delivery id,
        an existing row (held, failed or already retried) is left as it is. Returns how many
        rows are new."""
        if not held:
            return 0
        c = failed_deliveries.c
        added = 0
        async with self.engine.begin() as conn:
            for item in held:
                job = item.job
                stmt = _insert(conn, failed_deliveries).values(
                    delivery_id=job.delivery_id, endpoint_id=job.endpoint_id,
                    event_id=job.event.id or "", event_type=job.event.event, status="held",
                    reason="endpoint_disabled", error=item.disabled_reason, source_queue=None,
                    job=job.model_dump(mode="json"), failed_at=now, updated_at=now)
                result = await conn.execute(
                    stmt.on_conflict_do_nothing(index_elements=[c.delivery_id]))
                added += max(cast(sa.CursorResult[Any], result).rowcount, 0)
        return added

    async def park_message(self, record: ParkedRecord) -> bool:
        """Keep an unreadable parked message verbatim (once per id); True if it is new."""
        async with self.engine.begin() as conn:
            stmt = _insert(conn, parked_messages).values(
                id=record.id, queue=record.queue, reason=record.reason, error=record.error,
                headers=record.headers, body=record.body, parked_at=record.parked_at)
            result = await conn.execute(
                stmt.on_conflict_do_nothing(index_elements=[parked_messages.c.id]))
        return cast(sa.CursorResult[Any], result).rowcount == 1

    async def list_parked(self, *, limit: int, after: str | None) -> list[ParkedRecord]:
        """Unreadable parked messages, oldest first; ``after`` is the previous page's last id."""
        c = parked_messages.c
        query = parked_messages.select().order_by(c.parked_at, c.id).limit(limit)
        async with self.engine.connect() as conn:
            if after:
                mark = (await conn.execute(sa.select(c.parked_at).where(c.id == after))).first()
                if mark is not None:
                    query = query.where((c.parked_at > mark.parked_at)
                                        | ((c.parked_at == mark.parked_at) & (c.id > after)))
                else:
                    query = query.where(c.id > after)
            rows = (await conn.execute(query)).all()
        return [ParkedRecord(id=r.id, queue=r.queue, reason=r.reason, error=r.error,
                             headers=dict(r.headers), body=bytes(r.body),
                             parked_at=_utc(r.parked_at)) for r in rows]

    async def get_delivery(self, delivery_id: str, conn: AsyncConnection | None = None
                           ) -> DeliveryRecord | None:
        query = failed_deliveries.select().where(
            failed_deliveries.c.delivery_id == delivery_id)
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(query)).first()
        return None if row is None else DeliveryRecord.of(row)

    async def list_deliveries(self, endpoint_id: str, *, status: DeliveryStatus, limit: int,
                              after: str | None) -> list[DeliveryRecord]:
        """One endpoint's stored deliveries of one status, oldest failure first; ``after`` is
        the delivery id the previous page ended with."""
        c = failed_deliveries.c
        query = (failed_deliveries.select()
                 .where((c.endpoint_id == endpoint_id) & (c.status == status))
                 .order_by(c.failed_at, c.delivery_id).limit(limit))
        async with self.engine.connect() as conn:
            if after:
                mark = (await conn.execute(sa.select(c.failed_at).where(
                    (c.delivery_id == after) & (c.endpoint_id == endpoint_id)))).first()
                if mark is not None:
                    query = query.where((c.failed_at > mark.failed_at)
                                        | ((c.failed_at == mark.failed_at)
                                           & (c.delivery_id > after)))
                else:
                    query = query.where(c.delivery_id > after)
            return [DeliveryRecord.of(r) for r in await conn.execute(query)]

    async def recoverable(self, endpoint_id: str, *, since: datetime, limit: int,
                          after: str | None = None) -> list[DeliveryRecord]:
        """Failed deliveries of the endpoint failed at/after ``since``, and every held one."""
        c = failed_deliveries.c
        since = _utc(since)  # SQLite compares the stored UTC text: never bind another offset
        query = (failed_deliveries.select()
                 .where((c.endpoint_id == endpoint_id)
                        & (((c.status == "failed") & (c.failed_at >= since))
                           | (c.status == "held")))
                 .order_by(c.delivery_id).limit(limit))
        if after:
            query = query.where(c.delivery_id > after)
        async with self.engine.connect() as conn:
            return [DeliveryRecord.of(r) for r in await conn.execute(query)]

    async def mark_retried(self, conn: AsyncConnection, delivery_id: str, *,
                           was: DeliveryStatus, actor: str, now: datetime) -> bool:
        """``failed``/``held`` → ``retried``, only if the row still has status ``was`` (two
        administrators retrying at once send it once)."""
        c = failed_deliveries.c
        result = await conn.execute(
            failed_deliveries.update()
            .where((c.delivery_id == delivery_id) & (c.status == was))
            .values(status="retried", retried_at=now, retried_by=actor, updated_at=now))
        return cast(sa.CursorResult[Any], result).rowcount == 1

    async def count_held(self, endpoint_id: str, conn: AsyncConnection | None = None) -> int:
        c = failed_deliveries.c
        query = sa.select(sa.func.count()).select_from(failed_deliveries).where(
            (c.endpoint_id == endpoint_id) & (c.status == "held"))
        if conn is not None:
            return int((await conn.execute(query)).scalar_one())
        async with self.engine.connect() as own:
            return int((await own.execute(query)).scalar_one())

    # -- seen events (AMQP deduplication) --------------------------------------------------

    async def seen_many(self, event_ids: Collection[str]) -> dict[str, datetime]:
        """When each of ``event_ids`` that is remembered was last fanned out (one query)."""
        if not event_ids:
            return {}
        ids = list(event_ids)
        direct = self._direct_rows(
            "SELECT event_id, seen_at FROM seen_events WHERE event_id IN ({})", ids)
        if direct is not None:
            return {event_id: _utc(datetime.fromisoformat(at)) for event_id, at in direct}
        if self._pg is not None:
            return {row[0]: _utc(row[1]) for row in await self._pg.fetch(
                "SELECT event_id, seen_at FROM seen_events WHERE event_id = ANY($1::text[])",
                ids)}
        c = seen_events.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(c.event_id, c.seen_at).where(c.event_id.in_(ids)))).all()
        return {row.event_id: _utc(row.seen_at) for row in rows}

    async def remember_events(self, event_ids: Iterable[str], now: datetime) -> None:
        """Record event ids as fanned out at ``now`` (an old record is refreshed), in one
        statement executed for all of them."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return
        if self._direct is not None:
            at = sqlite_timestamp(now)
            await self._direct.write(
                "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?) "
                "ON CONFLICT (event_id) DO UPDATE SET seen_at = excluded.seen_at",
                [(event_id, at) for event_id in ids])
            return
        if self._pg is not None:  # sorted: concurrent upserts lock the rows in one order
            await self._pg.execute(
                "INSERT INTO seen_events (event_id, seen_at) "
                "SELECT event_id, $2::timestamptz FROM unnest($1::text[]) AS u(event_id) "
                "ON CONFLICT (event_id) DO UPDATE SET seen_at = excluded.seen_at",
                sorted(ids), now)
            return
        rows = [{"event_id": event_id, "seen_at": now} for event_id in ids]
        async with self.engine.begin() as conn:
            stmt = _insert(conn, seen_events)
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=[seen_events.c.event_id],
                set_={"seen_at": stmt.excluded.seen_at}), rows)

    async def purge_seen(self, older_than: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                seen_events.delete().where(seen_events.c.seen_at < older_than))
        return cast(sa.CursorResult[Any], result).rowcount

    # -- tokens ---------------------------------------------------------------------------

    async def insert_token(self, conn: AsyncConnection, record: TokenRecord) -> None:
        await conn.execute(tokens.insert().values(
            id=record.id, role=record.role, description=record.description,
            token_hash=record.token_hash, created_at=record.created_at,
            revoked_at=record.revoked_at, tenant_id=record.tenant_id,
            expires_at=record.expires_at))

    async def list_tokens(self, *, limit: int, after: str | None,
                          tenant: str | None = None) -> list[TokenRecord]:
        query = tokens.select().order_by(tokens.c.id).limit(limit)
        if after:
            query = query.where(tokens.c.id > after)
        if tenant is not None:
            query = query.where(tokens.c.tenant_id == tenant)
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

    async def principals(self, token_hashes: Collection[str]) -> dict[str, Principal]:
        """The principals of the live (not revoked) tokens among ``token_hashes`` (one query)."""
        if not token_hashes:
            return {}
        hashes = list(token_hashes)
        now = datetime.now(UTC)
        direct = self._direct_rows("SELECT id, role, token_hash, tenant_id, expires_at FROM "
                                   "tokens WHERE token_hash IN ({}) AND revoked_at IS NULL",
                                   hashes)
        if direct is not None:
            return {token_hash: Principal(token_id=token_id, role=role, tenant=tenant)
                    for token_id, role, token_hash, tenant, until in direct
                    if until is None or _utc(datetime.fromisoformat(until)) > now}
        query = sa.select(tokens.c.id, tokens.c.role, tokens.c.token_hash,
                          tokens.c.tenant_id, tokens.c.expires_at).where(
            tokens.c.token_hash.in_(hashes) & tokens.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        # a portal session's token ends by itself (expires_at)
        return {row.token_hash: Principal(token_id=row.id, role=row.role, tenant=row.tenant_id)
                for row in rows if row.expires_at is None or _utc(row.expires_at) > now}
