"""The message log's storage (SQLAlchemy Core, async): every accepted event (its payload while
retained), every delivery of it, every attempt — what the console's message log, event page
and endpoint health read, and what ``GET /v1/events`` and ``GET /v1/deliveries`` answer.

Tables are created by ``migrations/ingest_0005_message_log.py``; the decisions (statuses,
cursors, health) are :mod:`services.ingest.decisions.messages`. Timestamps are UTC; SQLite
keeps them without an offset, so rows read back are normalised (:func:`_utc`).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.ingest.decisions.messages import (
    HEALTH_WINDOW,
    LOG_STATUSES,
    DeliveryState,
    LogAttempt,
    LogDelivery,
    LogEvent,
    LogStatus,
    plan_attempts,
    unique_attempts,
)
from services.ingest.store import endpoints, metadata
from shared.db import DirectPostgres, DirectSQLite, sqlite_timestamp

log_events = sa.Table(
    "log_events",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lang", sa.String(8), nullable=True),
    sa.Column("subject", sa.String(512), nullable=True),
    sa.Column("payload", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("tenant_id", sa.String(64), nullable=True),  # ingest_0010; NULL: every tenant
    sa.Index("ix_log_events_received_at", "received_at", "id"),
    sa.Index("ix_log_events_tenant", "tenant_id", "id"),
    sa.Index("ix_log_events_type_received_at", "event_type", "received_at"),
    sa.Index("ix_log_events_subject", "subject"),
)

log_deliveries = sa.Table(
    "log_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("attempts_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_log_deliveries_event", "event_id"),
    sa.Index("ix_log_deliveries_endpoint_created", "endpoint_id", "created_at"),
    sa.Index("ix_log_deliveries_status_created", "status", "created_at"),
    sa.Index("ix_log_deliveries_created", "created_at", "id"),
)

log_attempts = sa.Table(
    "log_attempts",
    metadata,
    sa.Column("delivery_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("request_headers", sa.JSON, nullable=False),
    sa.Column("response_headers", sa.JSON, nullable=False),
    sa.Column("response_excerpt", sa.Text, nullable=True),
    sa.Column("error", sa.String(1000), nullable=True),
    sa.Index("ix_log_attempts_endpoint_at", "endpoint_id", "at"),
    sa.Index("ix_log_attempts_at", "at"),
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _insert(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True)
class EventFilter:
    event_type: str | None = None
    status: LogStatus | None = None
    endpoint_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    """Only events with a delivery to this tenant's endpoints (counting only those)."""


def _of_tenant(tenant: str) -> sa.ColumnElement[bool]:
    """A delivery to one of ``tenant``'s endpoints (a tenant-scoped token sees no other)."""
    return log_deliveries.c.endpoint_id.in_(
        sa.select(endpoints.c.id).where(endpoints.c.tenant_id == tenant))


@dataclass(frozen=True)
class EventRow:
    id: str
    event_type: str
    received_at: datetime
    lang: str | None
    payload: dict[str, JsonValue] | None
    counts: dict[str, int]


@dataclass(frozen=True)
class AttemptRow:
    attempt: int
    at: datetime
    outcome: str
    status_code: int | None
    latency_ms: float | None
    request_headers: dict[str, str]
    response_headers: dict[str, str]
    response_excerpt: str | None
    error: str | None


@dataclass(frozen=True)
class DeliveryRow:
    id: str
    event_id: str
    event_type: str | None
    endpoint_id: str
    url: str
    status: LogStatus
    created_at: datetime
    attempts_count: int
    last_attempt: int
    """The highest attempt number seen (0: none)."""
    last_attempt_at: datetime | None
    next_retry_at: datetime | None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> DeliveryRow:
        m = row._mapping
        return cls(id=m["id"], event_id=m["event_id"], event_type=m.get("event_type"),
                   endpoint_id=m["endpoint_id"], url=m["url"], status=m["status"],
                   created_at=_utc(m["created_at"]), attempts_count=m["attempts_count"],
                   last_attempt=m["last_attempt"],
                   last_attempt_at=_utc_or_none(m["last_attempt_at"]),
                   next_retry_at=_utc_or_none(m["next_retry_at"]))


class MessageLog:
    """Queries of the message log over one engine (ingest's own database)."""

    def __init__(self, engine: AsyncEngine,
                 direct: DirectSQLite | DirectPostgres | None = None) -> None:
        self.engine = engine
        self._direct = direct if isinstance(direct, DirectSQLite) else None
        """On SQLite, the writer the two per-batch writes (:meth:`record`,
        :meth:`record_attempts`) go through as plain ``sqlite3`` (:mod:`shared.db`); the
        caller owns it (ingest shares its store's). None: everything on the engine."""
        self._pg = direct if isinstance(direct, DirectPostgres) else None
        """On PostgreSQL, the same two writes as plain ``asyncpg`` (:mod:`shared.db`)."""

    # -- writing ----------------------------------------------------------------------------

    async def record(self, events: Sequence[LogEvent], deliveries: Sequence[LogDelivery]
                     ) -> None:
        """Record accepted events and their deliveries (one transaction; a redelivered event
        changes nothing: rows are inserted once)."""
        if not events and not deliveries:
            return
        if self._direct is not None:
            await self._direct.transaction(functools.partial(
                _record_direct, events=events, deliveries=deliveries))
            return
        if self._pg is not None:
            await self._pg.execute(_RECORD_PG, *_record_pg_args(events, deliveries))
            return
        async with self.engine.begin() as conn:
            if events:
                stmt = _insert(conn, log_events)
                await conn.execute(stmt.on_conflict_do_nothing(
                    index_elements=[log_events.c.id]),
                    [{"id": e.id, "event_type": e.event_type, "received_at": e.received_at,
                      "lang": e.lang, "subject": e.subject, "payload": e.payload,
                      "tenant_id": e.tenant}
                     for e in events])
            if deliveries:
                stmt2 = _insert(conn, log_deliveries)
                await conn.execute(stmt2.on_conflict_do_nothing(
                    index_elements=[log_deliveries.c.id]),
                    [{"id": d.id, "event_id": d.event_id, "endpoint_id": d.endpoint_id,
                      "url": d.url, "status": d.status, "created_at": d.created_at,
                      "updated_at": d.created_at, "attempts_count": 0, "last_attempt": 0}
                     for d in deliveries])

    async def record_attempts(self, attempts: Sequence[LogAttempt], now: datetime) -> None:
        """Record attempts (once each: a redelivered fact changes nothing) and move their
        deliveries' status (:func:`~services.ingest.decisions.messages.plan_attempts`). A
        delivery the log never saw fanned out (older than the log) gets a row of its own.

        Set-based, a handful of statements per batch whatever its size (one statement per
        attempt cost ~0.9 ms each on SQLite — slower than the deliverer makes them)."""
        unique = unique_attempts(attempts)
        if not unique:
            return
        if self._direct is not None:
            await self._direct.transaction(functools.partial(
                _record_attempts_direct, attempts=unique, now=now))
            return
        if self._pg is not None:
            await self._pg.transaction(functools.partial(
                _record_attempts_pg, attempts=unique, now=now))
            return
        a, d = log_attempts.c, log_deliveries.c
        ids = sorted({x.delivery_id for x in unique})
        async with self.engine.begin() as conn:
            seen = {(r.delivery_id, r.attempt) for r in await conn.execute(
                sa.select(a.delivery_id, a.attempt).where(a.delivery_id.in_(ids)))}
            new = [x for x in unique if (x.delivery_id, x.attempt) not in seen]
            if not new:
                return
            await conn.execute(_insert(conn, log_attempts).on_conflict_do_nothing(
                index_elements=[a.delivery_id, a.attempt]), [
                {"delivery_id": x.delivery_id, "attempt": x.attempt,
                 "endpoint_id": x.endpoint_id, "at": x.at, "outcome": x.outcome,
                 "status_code": x.status_code, "latency_ms": x.latency_ms,
                 "request_headers": x.request_headers,
                 "response_headers": x.response_headers,
                 "response_excerpt": x.response_excerpt, "error": x.error} for x in new])
            stored = {r.id: DeliveryState(r.status, r.last_attempt, r.attempts_count)
                      for r in await conn.execute(
                          sa.select(d.id, d.status, d.last_attempt, d.attempts_count)
                          .where(d.id.in_(sorted({x.delivery_id for x in new}))))}
            plan = plan_attempts(new, stored, now)
            if plan.missing:
                await conn.execute(_insert(conn, log_deliveries).on_conflict_do_nothing(
                    index_elements=[d.id]), plan.missing)
            if plan.moved:
                await conn.execute(
                    log_deliveries.update().where(d.id == sa.bindparam("key")).values(
                        status=sa.bindparam("status"),
                        last_attempt=sa.bindparam("last_attempt"),
                        attempts_count=sa.bindparam("attempts_count"),
                        last_attempt_at=sa.bindparam("last_attempt_at"),
                        next_retry_at=sa.bindparam("next_retry_at"), updated_at=now),
                    plan.moved)
            if plan.counted:  # older attempts seen late: counted, the status unchanged
                await conn.execute(
                    log_deliveries.update().where(d.id == sa.bindparam("key")).values(
                        attempts_count=sa.bindparam("attempts_count"), updated_at=now),
                    plan.counted)

    async def mark(self, delivery_ids: Sequence[str], status: LogStatus, now: datetime,
                   conn: AsyncConnection | None = None) -> None:
        """Set deliveries' status (``failed`` from the dead-letter store, ``retried`` on a
        resend); no next retry is due for either."""
        if not delivery_ids:
            return
        d = log_deliveries.c
        stmt = (log_deliveries.update().where(d.id.in_(list(delivery_ids)))
                .values(status=status, updated_at=now, next_retry_at=None))
        if conn is not None:
            await conn.execute(stmt)
            return
        async with self.engine.begin() as own:
            await own.execute(stmt)

    # -- reading ----------------------------------------------------------------------------

    async def list_events(self, where: EventFilter, *, limit: int,
                          after: tuple[datetime, str] | None) -> list[EventRow]:
        """Events newest first (by reception, then id), with their delivery counts."""
        e, d = log_events.c, log_deliveries.c
        query = sa.select(e.id, e.event_type, e.received_at, e.lang)
        if where.event_type:
            query = query.where(e.event_type == where.event_type)
        if where.since is not None:
            query = query.where(e.received_at >= _utc(where.since))
        if where.until is not None:
            query = query.where(e.received_at < _utc(where.until))
        if where.status is not None or where.endpoint_id is not None or where.tenant:
            cond = d.event_id == e.id
            if where.status is not None:
                cond = cond & (d.status == where.status)
            if where.endpoint_id is not None:
                cond = cond & (d.endpoint_id == where.endpoint_id)
            if where.tenant is not None:
                cond = cond & _of_tenant(where.tenant)
            query = query.where(sa.exists(sa.select(d.id).where(cond)))
        if after is not None:
            at, ident = after
            query = query.where((e.received_at < at)
                                | ((e.received_at == at) & (e.id < ident)))
        query = query.order_by(e.received_at.desc(), e.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            counts = await self._counts(conn, [r.id for r in rows], where.tenant)
        return [EventRow(id=r.id, event_type=r.event_type, received_at=_utc(r.received_at),
                         lang=r.lang, payload=None, counts=counts.get(r.id, {}))
                for r in rows]

    async def _counts(self, conn: AsyncConnection, event_ids: list[str],
                      tenant: str | None = None) -> dict[str, dict[str, int]]:
        if not event_ids:
            return {}
        d = log_deliveries.c
        query = sa.select(d.event_id, d.status, sa.func.count()).where(d.event_id.in_(event_ids))
        if tenant is not None:
            query = query.where(_of_tenant(tenant))
        rows = await conn.execute(query.group_by(d.event_id, d.status))
        out: dict[str, dict[str, int]] = {}
        for event_id, status, count in rows:
            out.setdefault(event_id, {})[status] = int(count)
        return out

    async def get_event(self, event_id: str, tenant: str | None = None
                        ) -> tuple[EventRow, list[tuple[DeliveryRow, list[AttemptRow]]]] | None:
        """One event with each of its deliveries and their attempts (oldest first);
        ``tenant``: only the deliveries to its endpoints, and ``None`` if it has none."""
        e, d, a = log_events.c, log_deliveries.c, log_attempts.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(log_events.select().where(e.id == event_id))).first()
            if row is None:
                return None
            query = (sa.select(log_deliveries, e.event_type).select_from(
                log_deliveries.outerjoin(log_events, e.id == d.event_id))
                .where(d.event_id == event_id).order_by(d.endpoint_id, d.id))
            if tenant is not None:
                query = query.where(_of_tenant(tenant))
            deliveries = [DeliveryRow.of(r) for r in await conn.execute(query)]
            if tenant is not None and not deliveries:
                return None
            attempts: dict[str, list[AttemptRow]] = {}
            if deliveries:
                for r in await conn.execute(
                        log_attempts.select()
                        .where(a.delivery_id.in_([x.id for x in deliveries]))
                        .order_by(a.delivery_id, a.attempt)):
                    attempts.setdefault(r.delivery_id, []).append(_attempt(r))
        m = row._mapping
        event = EventRow(id=m["id"], event_type=m["event_type"],
                         received_at=_utc(m["received_at"]), lang=m["lang"],
                         payload=m["payload"], counts={})
        return event, [(x, attempts.get(x.id, [])) for x in deliveries]

    async def list_deliveries(self, *, status: LogStatus | None, endpoint_id: str | None,
                              event_id: str | None, limit: int,
                              after: tuple[datetime, str] | None,
                              tenant: str | None = None) -> list[DeliveryRow]:
        """Deliveries newest first (by creation, then id), with their event's type;
        ``tenant``: only those to its endpoints."""
        e, d = log_events.c, log_deliveries.c
        query = sa.select(log_deliveries, e.event_type).select_from(
            log_deliveries.outerjoin(log_events, e.id == d.event_id))
        if tenant is not None:
            query = query.where(_of_tenant(tenant))
        if status is not None:
            query = query.where(d.status == status)
        if endpoint_id is not None:
            query = query.where(d.endpoint_id == endpoint_id)
        if event_id is not None:
            query = query.where(d.event_id == event_id)
        if after is not None:
            at, ident = after
            query = query.where((d.created_at < at) | ((d.created_at == at) & (d.id < ident)))
        query = query.order_by(d.created_at.desc(), d.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [DeliveryRow.of(r) for r in await conn.execute(query)]

    async def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        e, d = log_events.c, log_deliveries.c
        query = sa.select(log_deliveries, e.event_type).select_from(
            log_deliveries.outerjoin(log_events, e.id == d.event_id)).where(d.id == delivery_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else DeliveryRow.of(row)

    async def failed_of(self, endpoint_id: str, *, limit: int, after: str | None
                        ) -> list[str]:
        """Ids of the endpoint's deliveries whose status is ``failed``, by id."""
        d = log_deliveries.c
        query = (sa.select(d.id).where((d.endpoint_id == endpoint_id) & (d.status == "failed"))
                 .order_by(d.id).limit(limit))
        if after is not None:
            query = query.where(d.id > after)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def hourly(self, endpoint_ids: Sequence[str], now: datetime
                     ) -> dict[str, list[tuple[datetime, str, int]]]:
        """Attempts of the last 24 hours per endpoint, counted by hour and outcome."""
        if not endpoint_ids:
            return {}
        a = log_attempts.c
        async with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                hour: Any = sa.func.date_trunc("hour", a.at)
            else:
                hour = sa.func.strftime("%Y-%m-%d %H:00:00", a.at)
            rows = await conn.execute(
                sa.select(a.endpoint_id, hour.label("hour"), a.outcome, sa.func.count())
                .where(a.endpoint_id.in_(list(endpoint_ids))
                       & (a.at >= _utc(now - HEALTH_WINDOW)))
                .group_by(a.endpoint_id, hour, a.outcome))
            out: dict[str, list[tuple[datetime, str, int]]] = {}
            for endpoint_id, at, outcome, count in rows:
                when = at if isinstance(at, datetime) else datetime.fromisoformat(at)
                out.setdefault(endpoint_id, []).append((_utc(when), outcome, int(count)))
        return out

    async def last_delivered(self, endpoint_ids: Sequence[str]) -> dict[str, datetime]:
        """When each endpoint last had a delivered attempt (in the log)."""
        if not endpoint_ids:
            return {}
        a = log_attempts.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(a.endpoint_id, sa.func.max(a.at))
                .where(a.endpoint_id.in_(list(endpoint_ids)) & (a.outcome == "delivered"))
                .group_by(a.endpoint_id))
            return {endpoint_id: _utc(at) for endpoint_id, at in rows if at is not None}

    # -- retention and personal data --------------------------------------------------------

    async def purge_payloads(self, older_than: datetime) -> int:
        """Forget the payloads of events received before ``older_than``, and with them the
        link to their data subject (the log rows stay, naming no one). Rows changed."""
        e = log_events.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                log_events.update()
                .where((e.received_at < _utc(older_than))
                       & (e.payload.is_not(None) | e.subject.is_not(None)))
                .values(payload=None, subject=None))
        return cast(sa.CursorResult[Any], result).rowcount

    async def purge_log(self, older_than: datetime) -> int:
        """Delete events, deliveries and attempts older than ``older_than``; events removed."""
        e, d, a = log_events.c, log_deliveries.c, log_attempts.c
        cutoff = _utc(older_than)
        async with self.engine.begin() as conn:
            await conn.execute(log_attempts.delete().where(a.at < cutoff))
            await conn.execute(log_deliveries.delete().where(d.updated_at < cutoff))
            result = await conn.execute(log_events.delete().where(e.received_at < cutoff))
        return cast(sa.CursorResult[Any], result).rowcount

    async def tenant_event_ids(self, tenant: str, *, limit: int, after: str | None
                               ) -> list[str]:
        """The ids of the logged events of ``tenant`` (by id; a platform-wide event is
        nobody's): those that reached none of its endpoints included."""
        e = log_events.c
        query = sa.select(e.id).where(e.tenant_id == tenant).order_by(e.id).limit(limit)
        if after is not None:
            query = query.where(e.id > after)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def subject_events(self, subject: str) -> list[EventRow]:
        """The retained events about ``subject`` (GDPR Art. 15), oldest first."""
        e = log_events.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                log_events.select().where(e.subject == subject)
                .order_by(e.received_at, e.id))).all()
        return [EventRow(id=r.id, event_type=r.event_type, received_at=_utc(r.received_at),
                         lang=r.lang, payload=r.payload, counts={}) for r in rows]

    async def erase_subject(self, subject: str) -> int:
        """GDPR Art. 17: drop the payloads of the subject's events and the link to it (the
        event ids, types and delivery outcomes stay: they name no one). Events erased."""
        e = log_events.c
        async with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":  # overwrite the freed pages, not just unlink
                await conn.exec_driver_sql("PRAGMA secure_delete = ON")
            result = await conn.execute(
                log_events.update().where(e.subject == subject)
                .values(payload=None, subject=None))
        return cast(sa.CursorResult[Any], result).rowcount


# -- the write path as plain sqlite3 --------------------------------------------------------
#
# Why: through SQLAlchemy's async engine each batch paid statement compilation, per-row bind
# processing and the greenlet/thread hops of every statement — most of what ingest's profile
# at saturation spent in aiosqlite and SQLAlchemy, for writes made for every event, delivery
# and attempt. The same transactions run here on the store's writer thread
# (:class:`shared.db.DirectSQLite`), rows written as the engine reads them: datetimes as its
# UTC wall-clock text, JSON as JSON text (read back by the engine's ``json.loads``). The tests
# read both paths' rows back through the engine and hold them equal.

_EVENT_INSERT = ("INSERT INTO log_events (id, event_type, received_at, lang, subject, payload, "
                 "tenant_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
_DELIVERY_INSERT = (
    "INSERT INTO log_deliveries (id, event_id, endpoint_id, url, status, created_at, "
    "updated_at, attempts_count, last_attempt, last_attempt_at, next_retry_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
_ATTEMPT_INSERT = (
    "INSERT INTO log_attempts (delivery_id, attempt, endpoint_id, at, outcome, status_code, "
    "latency_ms, request_headers, response_headers, response_excerpt, error) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt) DO NOTHING")
IN_CHUNK = 500
"""Most values in one ``IN (…)`` list of the direct path."""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ts(value: datetime | None) -> str | None:
    return None if value is None else sqlite_timestamp(value)


def _select_in(conn: sqlite3.Connection, sql: str, values: Sequence[str]) -> list[Any]:
    """The rows of ``sql`` for all of ``values``, asked in chunks (its ``{}`` becomes the
    chunk's placeholders; values are bound, never formatted in)."""
    rows: list[Any] = []
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start:start + IN_CHUNK]
        rows.extend(conn.execute(sql.format(", ".join("?" * len(chunk))), chunk))
    return rows


def _record_direct(conn: sqlite3.Connection, *, events: Sequence[LogEvent],
                   deliveries: Sequence[LogDelivery]) -> None:
    """:meth:`MessageLog.record` inside the writer's transaction."""
    if events:
        conn.executemany(_EVENT_INSERT, [
            (e.id, e.event_type, sqlite_timestamp(e.received_at), e.lang, e.subject,
             None if e.payload is None else _json(e.payload), e.tenant) for e in events])
    if deliveries:
        conn.executemany(_DELIVERY_INSERT, [
            (d.id, d.event_id, d.endpoint_id, d.url, d.status, sqlite_timestamp(d.created_at),
             sqlite_timestamp(d.created_at), 0, 0, None, None) for d in deliveries])


def _record_attempts_direct(conn: sqlite3.Connection, *, attempts: Sequence[LogAttempt],
                            now: datetime) -> None:
    """:meth:`MessageLog.record_attempts` inside the writer's transaction (``attempts``
    unique by delivery and attempt number)."""
    seen = {(row[0], row[1]) for row in _select_in(
        conn, "SELECT delivery_id, attempt FROM log_attempts WHERE delivery_id IN ({})",
        sorted({x.delivery_id for x in attempts}))}
    new = [x for x in attempts if (x.delivery_id, x.attempt) not in seen]
    if not new:
        return
    conn.executemany(_ATTEMPT_INSERT, [
        (x.delivery_id, x.attempt, x.endpoint_id, sqlite_timestamp(x.at), x.outcome,
         x.status_code, x.latency_ms, _json(x.request_headers), _json(x.response_headers),
         x.response_excerpt, x.error) for x in new])
    stored = {row[0]: DeliveryState(row[1], row[2], row[3]) for row in _select_in(
        conn, "SELECT id, status, last_attempt, attempts_count FROM log_deliveries "
        "WHERE id IN ({})", sorted({x.delivery_id for x in new}))}
    plan = plan_attempts(new, stored, now)
    at = sqlite_timestamp(now)
    if plan.missing:
        conn.executemany(_DELIVERY_INSERT, [
            (r["id"], r["event_id"], r["endpoint_id"], r["url"], r["status"],
             sqlite_timestamp(r["created_at"]), at, r["attempts_count"], r["last_attempt"],
             _ts(r["last_attempt_at"]), _ts(r["next_retry_at"])) for r in plan.missing])
    if plan.moved:
        conn.executemany(
            "UPDATE log_deliveries SET status = ?, last_attempt = ?, attempts_count = ?, "
            "last_attempt_at = ?, next_retry_at = ?, updated_at = ? WHERE id = ?",
            [(r["status"], r["last_attempt"], r["attempts_count"], _ts(r["last_attempt_at"]),
              _ts(r["next_retry_at"]), at, r["key"]) for r in plan.moved])
    if plan.counted:  # older attempts seen late: counted, the status unchanged
        conn.executemany(
            "UPDATE log_deliveries SET attempts_count = ?, updated_at = ? WHERE id = ?",
            [(r["attempts_count"], at, r["key"]) for r in plan.counted])


# -- the write path as plain asyncpg ---------------------------------------------------------
#
# Why: as for SQLite, through the engine each batch paid the pool's pre-ping, statement
# compilation, per-row bind processing and greenlet switches, and an ``IN (…)`` of a new
# length a new prepared statement. Here every statement is constant text over arrays
# (``unnest``, ``= ANY``), prepared once per connection: a batch's events and deliveries are
# one statement, one round trip. Rows are written as the engine writes them (JSON as
# ``json.dumps`` text: PostgreSQL's ``json`` keeps the text as given); the tests read both
# paths' rows back and hold them equal.

_RECORD_PG = """
WITH events AS (
    INSERT INTO log_events (id, event_type, received_at, lang, subject, payload, tenant_id)
    SELECT id, event_type, received_at, lang, subject, payload::json, tenant_id
    FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                $6::text[], $7::text[])
        AS e(id, event_type, received_at, lang, subject, payload, tenant_id)
    ON CONFLICT (id) DO NOTHING)
INSERT INTO log_deliveries (id, event_id, endpoint_id, url, status, created_at, updated_at,
                            attempts_count, last_attempt)
SELECT id, event_id, endpoint_id, url, status, created_at, created_at, 0, 0
FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::timestamptz[]) AS d(id, event_id, endpoint_id, url, status, created_at)
ON CONFLICT (id) DO NOTHING
"""
"""One statement, so atomic: :meth:`MessageLog.record`'s transaction."""

_ATTEMPTS_SEEN_PG = ("SELECT delivery_id, attempt FROM log_attempts "
                     "WHERE delivery_id = ANY($1::text[])")
_ATTEMPTS_INSERT_PG = """
INSERT INTO log_attempts (delivery_id, attempt, endpoint_id, at, outcome, status_code,
                          latency_ms, request_headers, response_headers, response_excerpt, error)
SELECT delivery_id, attempt, endpoint_id, at, outcome, status_code, latency_ms,
       request_headers::json, response_headers::json, response_excerpt, error
FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::text[], $6::int[],
            $7::float8[], $8::text[], $9::text[], $10::text[], $11::text[])
    AS a(delivery_id, attempt, endpoint_id, at, outcome, status_code, latency_ms,
         request_headers, response_headers, response_excerpt, error)
ON CONFLICT (delivery_id, attempt) DO NOTHING
"""
_DELIVERIES_STORED_PG = ("SELECT id, status, last_attempt, attempts_count FROM log_deliveries "
                         "WHERE id = ANY($1::text[])")
_DELIVERIES_MISSING_PG = """
INSERT INTO log_deliveries (id, event_id, endpoint_id, url, status, created_at, updated_at,
                            attempts_count, last_attempt, last_attempt_at, next_retry_at)
SELECT id, event_id, endpoint_id, url, status, created_at, $11::timestamptz, attempts_count,
       last_attempt, last_attempt_at, next_retry_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::int[], $8::int[], $9::timestamptz[], $10::timestamptz[])
    AS d(id, event_id, endpoint_id, url, status, created_at, attempts_count, last_attempt,
         last_attempt_at, next_retry_at)
ON CONFLICT (id) DO NOTHING
"""
_DELIVERIES_MOVED_PG = """
UPDATE log_deliveries AS d SET status = m.status, last_attempt = m.last_attempt,
    attempts_count = m.attempts_count, last_attempt_at = m.last_attempt_at,
    next_retry_at = m.next_retry_at, updated_at = $7::timestamptz
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::timestamptz[],
            $6::timestamptz[])
    AS m(key, status, last_attempt, attempts_count, last_attempt_at, next_retry_at)
WHERE d.id = m.key
"""
_DELIVERIES_COUNTED_PG = """
UPDATE log_deliveries AS d SET attempts_count = m.attempts_count, updated_at = $3::timestamptz
FROM unnest($1::text[], $2::int[]) AS m(key, attempts_count)
WHERE d.id = m.key
"""


def _engine_json(value: Any) -> str:
    """JSON text as the engine writes it (SQLAlchemy's default serializer)."""
    return json.dumps(value)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column (the arrays ``unnest`` takes)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _record_pg_args(events: Sequence[LogEvent], deliveries: Sequence[LogDelivery]
                    ) -> list[list[Any]]:
    """The arrays of :data:`_RECORD_PG`."""
    return [*_columns([(e.id, e.event_type, e.received_at, e.lang, e.subject,
                        None if e.payload is None else _engine_json(e.payload), e.tenant)
                       for e in events], 7),
            *_columns([(d.id, d.event_id, d.endpoint_id, d.url, d.status, d.created_at)
                       for d in deliveries], 6)]


async def _record_attempts_pg(conn: Any, *, attempts: Sequence[LogAttempt],
                              now: datetime) -> None:
    """:meth:`MessageLog.record_attempts` inside the direct writer's transaction
    (``attempts`` unique by delivery and attempt number); the engine's statements, in its
    order, each one round trip whatever the batch's size."""
    seen = {(row[0], row[1]) for row in await conn.fetch(
        _ATTEMPTS_SEEN_PG, sorted({x.delivery_id for x in attempts}))}
    new = [x for x in attempts if (x.delivery_id, x.attempt) not in seen]
    if not new:
        return
    await conn.execute(_ATTEMPTS_INSERT_PG, *_columns([
        (x.delivery_id, x.attempt, x.endpoint_id, x.at, x.outcome, x.status_code,
         x.latency_ms, _engine_json(x.request_headers), _engine_json(x.response_headers),
         x.response_excerpt, x.error) for x in new], 11))
    stored = {row[0]: DeliveryState(row[1], row[2], row[3]) for row in await conn.fetch(
        _DELIVERIES_STORED_PG, sorted({x.delivery_id for x in new}))}
    plan = plan_attempts(new, stored, now)
    if plan.missing:
        await conn.execute(_DELIVERIES_MISSING_PG, *_columns([
            (r["id"], r["event_id"], r["endpoint_id"], r["url"], r["status"], r["created_at"],
             r["attempts_count"], r["last_attempt"], r["last_attempt_at"], r["next_retry_at"])
            for r in plan.missing], 10), now)
    if plan.moved:
        await conn.execute(_DELIVERIES_MOVED_PG, *_columns([
            (r["key"], r["status"], r["last_attempt"], r["attempts_count"],
             r["last_attempt_at"], r["next_retry_at"]) for r in plan.moved], 6), now)
    if plan.counted:  # older attempts seen late: counted, the status unchanged
        await conn.execute(_DELIVERIES_COUNTED_PG, *_columns([
            (r["key"], r["attempts_count"]) for r in plan.counted], 2), now)


def _attempt(row: sa.Row[Any]) -> AttemptRow:
    m = row._mapping
    return AttemptRow(attempt=m["attempt"], at=_utc(m["at"]), outcome=m["outcome"],
                      status_code=m["status_code"], latency_ms=m["latency_ms"],
                      request_headers=dict(m["request_headers"] or {}),
                      response_headers=dict(m["response_headers"] or {}),
                      response_excerpt=m["response_excerpt"], error=m["error"])


__all__ = [
    "LOG_STATUSES",
    "AttemptRow",
    "DeliveryRow",
    "EventFilter",
    "EventRow",
    "MessageLog",
]
