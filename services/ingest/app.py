"""Wiring of the ingest service: storage, broker, consumers (events, dead letters, endpoint
health), HTTP API, the purge task, and an orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from services.ingest import console
from services.ingest.catalog import load_catalog
from services.ingest.consumer import EventHandler
from services.ingest.control import ControlHandler
from services.ingest.dead_letters import DEAD_LETTER_QUEUES, DeadLetterHandler
from services.ingest.health import HEALTH_QUEUE, HealthHandler
from services.ingest.http import IngestApi, build_app
from services.ingest.message_log import MessageLog
from services.ingest.settings import Settings
from services.ingest.store import Store
from services.ingest.tenant_rate import TenantQuota
from services.ingest.tenant_store import TenantStore
from shared import topology
from shared.broker import Consumer, Publisher, connect, declare_topology
from shared.contracts import utcnow
from shared.db import make_engine, migrate
from shared.runtime import Stop
from shared.web import serve

log = structlog.get_logger("dihya.ingest")

MIGRATIONS = Path(__file__).parent / "migrations"
PURGE_INTERVAL = 300.0
"""Seconds between sweeps of expired idempotency keys and remembered event ids."""
SIDE_PREFETCH = 50
"""Prefetch of the dead-letter and health consumers (low-volume, database-bound)."""


async def _purge_keys(store: Store, window: int) -> None:
    """Forget idempotency keys and fanned-out event ids older than the window, so the tables
    stay small."""
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        try:
            cutoff = utcnow() - timedelta(seconds=window)
            removed = await store.purge_keys(cutoff)
            forgotten = await store.purge_seen(cutoff)
            if removed or forgotten:
                log.info("idempotency_purged", keys=removed, event_ids=forgotten)
        except Exception as exc:
            log.warning("idempotency_purge_failed", error=type(exc).__name__)


async def _purge_log(log_store: MessageLog, settings: Settings) -> None:
    """Forget payloads older than DIHYA_INGEST_PAYLOAD_RETENTION_DAYS and log rows older than
    DIHYA_INGEST_MESSAGE_LOG_DAYS (payloads are personal data: see services/ingest/messages)."""
    while True:
        try:
            await purge_message_log(log_store, settings, utcnow())
        except Exception as exc:
            log.warning("message_log_purge_failed", error=type(exc).__name__)
        await asyncio.sleep(PURGE_INTERVAL)


async def purge_message_log(log_store: MessageLog, settings: Settings, now: datetime
                            ) -> tuple[int, int]:
    """One retention sweep of the message log: (payloads forgotten, events deleted)."""
    payloads = await log_store.purge_payloads(
        now - timedelta(days=settings.payload_retention_days))
    events = await log_store.purge_log(now - timedelta(days=settings.message_log_days))
    if payloads or events:
        log.info("message_log_purged", payloads=payloads, events=events)
    return payloads, events


async def start(settings: Settings) -> Stop:
    """Start ingest; return the coroutine function that stops it gracefully."""
    # a bad catalog stops the start, loudly
    catalog = load_catalog(settings.event_catalog, settings.tzm_script)
    engine = make_engine(settings.database_url)
    await migrate(engine, MIGRATIONS)
    store = Store(engine, endpoint_cache_ttl=settings.endpoint_cache_ttl)
    message_log = MessageLog(engine, store.direct)
    tenants = TenantStore(engine, ttl=settings.endpoint_cache_ttl)
    # one budget for both doors (and, on PostgreSQL, every replica)
    rate = TenantQuota(settings.tenant_events_per_second, engine)
    recorder = message_log if settings.message_log else None
    connection = await connect(settings.amqp_url.get_secret_value(), service="ingest",
                               heartbeat=settings.amqp_heartbeat,
                               fast_path=settings.amqp_fast_path)
    await declare_topology(connection)
    publisher = await Publisher.open(connection, timeout=settings.publish_timeout)
    events = EventHandler(store, publisher, max_fanout=settings.max_fanout,
                          max_bytes=settings.max_body_bytes,
                          window_seconds=settings.idempotency_window,
                          catalog=catalog, unknown_event_types=settings.unknown_event_types,
                          message_log=recorder,
                          keep_payloads=settings.payload_retention_days > 0,
                          tenants=tenants, default_tenant=settings.default_tenant,
                          rate=rate)
    events.start()
    health = HealthHandler(store, publisher, disable_after=settings.disable_after,
                           message_log=recorder, failing_after=settings.failing_after)
    consumers = [
        Consumer(connection, topology.INGEST_EVENTS, events, prefetch=settings.prefetch,
                 probe=store.ping),
        *(Consumer(connection, queue, DeadLetterHandler(store, publisher, queue, recorder),
                   prefetch=SIDE_PREFETCH, probe=store.ping) for queue in DEAD_LETTER_QUEUES),
        Consumer(connection, topology.INGEST_CONTROL, ControlHandler(message_log, publisher),
                 prefetch=SIDE_PREFETCH, probe=store.ping),
        Consumer(connection, HEALTH_QUEUE, health, prefetch=SIDE_PREFETCH, probe=store.ping),
    ]
    for consumer in consumers:
        await consumer.start()

    async def broker_ready() -> bool:
        return not connection.is_closed

    api = IngestApi(settings, store, publisher, catalog, message_log, tenants, rate)

    async def consuming() -> bool:  # false while an outage pauses a consumer
        return all(c.ready for c in consumers)

    app = build_app(api, {"broker": broker_ready, "storage": store.ping,
                          "consuming": consuming})
    console.mount(app, settings)  # the web console at /console/ (unless turned off)
    runner = await serve(app, settings.host, settings.port)
    purger = asyncio.create_task(_purge_keys(store, settings.idempotency_window))
    log_purger = asyncio.create_task(_purge_log(message_log, settings))
    log.info("ingest_started", host=settings.host, port=settings.port,
             console=f"http://{settings.host}:{settings.port}{console.PREFIX}/"
             if settings.console_enabled else None)

    async def stop() -> None:
        # HTTP first (it publishes events), then the consumer finishes or hands back its
        # in-flight events, then the connections close.
        for task in (purger, log_purger):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await api.close()
        await asyncio.gather(*(c.stop(settings.shutdown_grace) for c in consumers))
        await events.close(settings.shutdown_grace)
        await health.close(settings.shutdown_grace)
        await rate.close(settings.shutdown_grace)
        with contextlib.suppress(Exception):
            await publisher.close()
        with contextlib.suppress(Exception):
            await connection.close()
        await store.close()
        log.info("ingest_stopped")

    return stop
