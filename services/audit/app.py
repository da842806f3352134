"""Wiring of the audit service: storage, broker consumers, batch writer and HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import structlog
from aio_pika.abc import AbstractRobustConnection

from services.audit.budget import ByteBudget
from services.audit.consumer import FactHandler, FactWriter
from services.audit.control import ControlHandler
from services.audit.heads import ExchangeSink, FileSink, Heads, Sink
from services.audit.http import RefusalRecorder, make_app
from services.audit.ordering import AcceptanceGate
from services.audit.settings import AuditSettings
from services.audit.started import Overdue, StartedAttempts
from services.audit.store import MIGRATIONS, AuditStore, is_transient
from shared import topology
from shared.batching import Batcher
from shared.broker import Consumer, Publisher, connect, declare_topology
from shared.contracts import AuditFact, utcnow
from shared.db import make_engine, migrate
from shared.runtime import Stop
from shared.web import ReadinessCheck, bootstrap_lookup, serve

log = structlog.get_logger("dihya.audit")

CONTROL_PREFETCH = 50
STORAGE_TIMEOUT = 2.0
"""Seconds the database has to answer a readiness (and consumer resume) probe."""


class StartRefusedError(RuntimeError):
    """The service will not start as configured (the message says why and what to set)."""


async def start(settings: AuditSettings) -> Stop:
    """Start the audit service; return the callable that stops it in order.

    Stop order (the reverse of start): stop consuming (in-flight facts get the shutdown grace
    to be committed, the rest are handed back to the broker), close HTTP, flush and stop the
    batch writer, then close the broker connection and the database.
    """
    stack = contextlib.AsyncExitStack()
    try:
        await _start(settings, stack)
    except BaseException:
        await stack.aclose()
        raise

    async def stop() -> None:
        await stack.aclose()

    return stop


async def _start(settings: AuditSettings, stack: contextlib.AsyncExitStack) -> None:
    grace = max(settings.shutdown_grace, 1.0)
    store = await _open_store(settings, stack)
    connection = await connect(settings.amqp_url.get_secret_value(), service="audit",
                               heartbeat=settings.amqp_heartbeat,
                               fast_path=settings.amqp_fast_path)
    stack.push_async_callback(connection.close)
    await declare_topology(connection)
    publisher = await Publisher.open(connection, timeout=settings.publish_timeout)
    stack.push_async_callback(publisher.close)

    heads = await _heads(settings, store, publisher)
    heads.start()
    stack.push_async_callback(heads.stop, grace)  # after the writer's last batch

    gate = AcceptanceGate(store.accepted_events, deadline=settings.acceptance_wait)
    gate.start()
    stack.push_async_callback(gate.stop)

    write_aheads = StartedAttempts(store.engine, store.direct)
    write_aheads.start()
    stack.push_async_callback(write_aheads.stop, grace)  # after the consumers stopped
    batcher: Batcher[AuditFact, None] = Batcher(
        FactWriter(store, gate, write_aheads), size=settings.batch_size, wait=settings.batch_wait,
        isolate=lambda exc: not is_transient(exc), name="audit writer",
    )
    batcher.start()
    stack.push_async_callback(batcher.stop, grace)

    storage_ready = functools.partial(_storage_ready, store)
    # a fact is held while the database is away (submit_retrying); an outage of what else a
    # handler needs (the broker path of a parking) pauses the consumer until it answers
    control = Consumer(connection, topology.AUDIT_CONTROL, ControlHandler(store, publisher),
                       prefetch=CONTROL_PREFETCH, probe=storage_ready)
    fact_handler = FactHandler(batcher, gate, publisher, write_aheads,
                               acceptance_wait=settings.acceptance_wait,
                               budgets={kind: ByteBudget(settings.max_fact_bytes_in_process)
                                        for kind in ("delivery", "other")})
    facts = Consumer(connection, topology.AUDIT_FACTS, fact_handler,
                     prefetch=settings.prefetch, probe=storage_ready)

    app = make_app(
        store,
        lookup=bootstrap_lookup(
            settings.admin_token.get_secret_value() if settings.admin_token else None,
            store.lookup),
        on_refusal=RefusalRecorder(batcher.submit),
        checks=_checks(connection, storage_ready, (control, facts)),
        page_limit=settings.page_limit,
        export_page=settings.export_page,
        retention_days=settings.retention_days,
        cors_origins=settings.origins,
        heads=heads,
        announce_erasure=lambda notice: publisher.send(
            topology.CONTROL_EXCHANGE, "subject.erase", notice),
    )
    runner = await serve(app, settings.host, settings.port)
    stack.push_async_callback(runner.cleanup)

    if settings.retention_days > 0:
        purger = asyncio.create_task(
            _purge_periodically(store, heads, settings.retention_days,
                                settings.retention_interval),
            name="audit-retention")
        stack.push_async_callback(_cancel, purger)

    overdue = Overdue(write_aheads, fact_handler.store_fact, timeout=settings.outcome_timeout,
                      interval=min(settings.outcome_timeout / 4, 30.0))
    overdue.start()
    stack.push_async_callback(overdue.stop)

    async def stop_consumers() -> None:
        await asyncio.gather(facts.stop(settings.shutdown_grace),
                             control.stop(settings.shutdown_grace))

    stack.push_async_callback(stop_consumers)
    await control.start()
    await facts.start()
    log.info("audit_started", host=settings.host, port=settings.port,
             batch_size=settings.batch_size, prefetch=settings.prefetch)


async def _open_store(settings: AuditSettings, stack: contextlib.AsyncExitStack) -> AuditStore:
    """Refuse a production start without its keys; migrate and open the store."""
    problems = settings.production_problems()
    if problems:
        raise StartRefusedError("production mode (DIHYA_AUDIT_MODE=production) refuses to start: "
                           + "; ".join(problems)
                           + ". Set them, or DIHYA_AUDIT_MODE=development to generate keys "
                             "kept in the database (not for production).")
    try:
        head_key = settings.head_key_text()
    except OSError as exc:
        raise StartRefusedError(f"DIHYA_AUDIT_HEAD_KEY_FILE cannot be read: {exc}") from None
    engine = make_engine(settings.database_url)
    stack.push_async_callback(engine.dispose)
    await migrate(engine, MIGRATIONS)
    store = await AuditStore.open(
        engine,
        subject_key=settings.subject_key.get_secret_value() if settings.subject_key else None,
        checkpoint_key=(settings.checkpoint_key.get_secret_value()
                        if settings.checkpoint_key else None),
        head_key=head_key,
        subject_paths=settings.subject_paths,
    )
    stack.push_async_callback(store.close)
    await _warn_at_start(settings, store, head_key)
    return store


async def _storage_ready(store: AuditStore) -> bool:
    return await asyncio.wait_for(store.ping(), timeout=STORAGE_TIMEOUT)


def _checks(connection: AbstractRobustConnection, storage_ready: ReadinessCheck,
            consumers: Sequence[Consumer]) -> dict[str, ReadinessCheck]:
    """``/readyz``: the broker connected, the database answering, every consumer consuming."""

    async def broker_ready() -> bool:
        return not connection.is_closed

    async def consuming() -> bool:  # false while an outage pauses a consumer
        return all(c.ready for c in consumers)

    return {"broker": broker_ready, "storage": storage_ready, "consuming": consuming}


async def _warn_at_start(settings: AuditSettings, store: AuditStore,
                         head_key: str | None) -> None:
    """Say what weakens the log's anchoring: keys kept in the database, missing triggers."""
    if settings.mode == "development":
        kept = [name for name, given in (("head", head_key), ("checkpoint",
                                         settings.checkpoint_key)) if given is None]
        if kept:
            log.warning("keys_in_database", keys=kept,
                        detail="development mode: these signing keys are kept in the "
                               "database, so whoever can write it can forge heads or "
                               "checkpoints; set them from outside in production")
    missing = await store.missing_triggers()
    if missing:
        log.warning("append_only_triggers_missing", triggers=missing,
                    detail="the database no longer refuses UPDATE/DELETE of audit records "
                           "(dropped by hand?): only the signed heads still reveal tampering")
    if not settings.heads_file:
        log.warning("heads_file_unset",
                    detail="signed heads go to the dihya.audit.heads exchange only: set "
                           "DIHYA_AUDIT_HEADS_FILE to keep them on storage apart from the "
                           "database")


async def _heads(settings: AuditSettings, store: AuditStore, publisher: Publisher) -> Heads:
    """The head signer and its sinks, the head chain resumed from the heads file."""
    signer = store.head_signer
    assert signer is not None  # AuditStore.open always makes one
    sinks: list[Sink] = [ExchangeSink(publisher)]
    previous = None
    if settings.heads_file:
        sink = FileSink(Path(settings.heads_file))
        sinks.append(sink)
        previous = await asyncio.to_thread(sink.last_head)
    if previous is not None and not await store.matches(previous):
        log.error("database_does_not_match_last_head", seq=previous.get("seq"),
                  head_hash=previous.get("head_hash"),
                  detail="the chain no longer holds the newest head of the heads file: "
                         "records were deleted or rewritten (run `dihya audit verify --heads`)")
    log.info("heads_signing", key_id=signer.key_id, public_key=signer.public_b64,
             interval=settings.heads_interval, file=settings.heads_file or None)
    return Heads(store.head_state, signer, sinks, interval=settings.heads_interval,
                 previous=previous)


async def _purge_periodically(store: AuditStore, heads: Heads, days: int,
                              interval: float) -> None:
    """Retention: purge what is older than ``days``, now and then every ``interval`` seconds.
    A failed purge is logged and tried again next time (it is safe to repeat). A head is
    signed after each purge that wrote a checkpoint, so the heads attest it at once."""
    while True:
        try:
            result = await store.purge(utcnow() - timedelta(days=days))
            if result.checkpoint:
                await heads.sign()
        except Exception:
            log.exception("retention_purge_failed")
        else:
            if result.deleted or result.checkpoint:
                log.info("retention_purged", deleted=result.deleted,
                         last_seq=result.checkpoint.last_seq if result.checkpoint else None)
        await asyncio.sleep(interval)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
