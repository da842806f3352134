"""Wiring of the audit service: storage, broker consumers, batch writer and HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import structlog
from aiohttp import web

from services.audit import handlers, metrics
from services.audit.batcher import submit_retrying
from services.audit.handlers import Rejected
from services.audit.heads import ExchangeSink, FileSink, Heads, Sink
from services.audit.http import make_app
from services.audit.ordering import AcceptanceGate
from services.audit.settings import AuditSettings
from services.audit.started import Overdue, StartedAttempts
from services.audit.store import MIGRATIONS, AuditStore, is_transient
from shared import topology
from shared.batching import Batcher
from shared.broker import Consumer, Delivery, Publisher, connect, declare_topology
from shared.contracts import AuditFact, TokenGrant, encode, utcnow
from shared.db import make_engine, migrate
from shared.ids import new_id
from shared.runtime import Stop
from shared.web import Principal, bootstrap_lookup, serve

log = structlog.get_logger("dihya.audit")

RETRY_FIRST = 0.2
RETRY_MAX = 5.0
"""Backoff while the database is unreachable (seconds)."""
CONTROL_PREFETCH = 50
MAX_PATH = 2048


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
    grace = settings.shutdown_grace
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

    connection = await connect(settings.amqp_url.get_secret_value(), service="audit",
                               heartbeat=settings.amqp_heartbeat)
    stack.push_async_callback(connection.close)
    await declare_topology(connection)
    publisher = await Publisher.open(connection, timeout=settings.publish_timeout)
    stack.push_async_callback(publisher.close)

    heads = await _heads(settings, store, publisher)
    heads.start()
    stack.push_async_callback(heads.stop, max(grace, 1.0))  # after the writer's last batch

    gate = AcceptanceGate(store.accepted_events, deadline=settings.acceptance_wait)
    gate.start()
    stack.push_async_callback(gate.stop)

    write_aheads = StartedAttempts(engine)

    async def write(facts: Sequence[AuditFact]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await store.append(facts)
        gate.committed(facts)
        metrics.COMMIT_SECONDS.observe(loop.time() - started)
        metrics.BATCH_SIZE.observe(len(facts))
        metrics.RECORDS_WRITTEN.inc(len(result.records))
        metrics.DUPLICATES.inc(result.duplicates)
        # their write-aheads are done with (a failure here only leaves one for the sweep,
        # which then finds the id recorded: a duplicate, dropped)
        outcomes = [f.id for f in facts if f.kind == "delivery.attempted"]
        if outcomes:
            try:
                await write_aheads.forget(outcomes)
            except Exception as exc:
                log.warning("write_aheads_not_forgotten", count=len(outcomes),
                            error=f"{type(exc).__name__}: {exc}"[:300])
        log.debug("batch_committed", written=len(result.records),
                  duplicates=result.duplicates,
                  head_seq=result.records[-1]["seq"] if result.records else None)

    batcher: Batcher[AuditFact, None] = Batcher(
        write, size=settings.batch_size, wait=settings.batch_wait,
        isolate=lambda exc: not is_transient(exc), name="audit writer",
    )
    batcher.start()
    stack.push_async_callback(batcher.stop, max(grace, 1.0))

    async def store_fact(fact: AuditFact) -> None:
        """Hand ``fact`` to the writer once its event's acceptance is stored (see ordering.py);
        return once it is committed (see submit_retrying)."""
        if not gate.passes(fact):
            with metrics.AWAITING_ACCEPTANCE.track_inprogress():
                accepted = await gate.wait(fact)
            if not accepted:
                metrics.STORED_BEFORE_ACCEPTANCE.inc()
                log.warning("stored_before_acceptance", fact_id=fact.id, kind=fact.kind,
                            event_id=fact.event_id, waited=settings.acceptance_wait)
        loop = asyncio.get_running_loop()
        started = loop.time()
        metrics.AWAITING_COMMIT.inc()
        try:
            await submit_retrying(batcher, fact, transient=is_transient,
                                  first_delay=RETRY_FIRST, max_delay=RETRY_MAX)
        finally:
            metrics.AWAITING_COMMIT.dec()
        metrics.WRITE_LATENCY.observe(loop.time() - started)

    async def park(queue: str, message: Delivery, reason: str, why: str) -> None:
        await publisher.park(queue, message, reason=reason, error=why)
        metrics.PARKED.labels(queue, reason).inc()
        log.warning("message_parked", queue=queue, reason=reason, error=why,
                    message_id=message.message_id)

    async def on_fact(message: Delivery) -> None:
        facts = handlers.decode_facts(message.body)
        if isinstance(facts, Rejected):
            await park(topology.AUDIT_FACTS, message, facts.reason, facts.error)
            return
        ahead, facts = handlers.split_started(facts)
        await write_aheads.hold(ahead)  # a batch holds one kind: all write-aheads, or none
        if not facts:
            return
        problems = [handlers.storable_problem(fact) for fact in facts]
        if len(facts) == 1 and problems[0]:
            await park(topology.AUDIT_FACTS, message, "schema_invalid", problems[0])
            return
        # A batch: its storable facts are stored, each unstorable one is parked on its own.
        results = await asyncio.gather(
            *(store_fact(fact) if problem is None else park_fact(message, fact, problem)
              for fact, problem in zip(facts, problems, strict=True)),
            return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # requeued; the facts stored meanwhile are dropped as duplicates

    async def park_fact(message: Delivery, fact: AuditFact, why: str) -> None:
        await publisher.park_body(topology.AUDIT_FACTS, encode(fact), reason="schema_invalid",
                                  error=why, headers=message.headers, type=fact.type)
        metrics.PARKED.labels(topology.AUDIT_FACTS, "schema_invalid").inc()
        log.warning("fact_parked", queue=topology.AUDIT_FACTS, reason="schema_invalid",
                    error=why, fact_id=fact.id, kind=fact.kind)

    async def on_control(message: Delivery) -> None:
        grant = handlers.decode(message.body, TokenGrant)
        if isinstance(grant, Rejected):
            await park(topology.AUDIT_CONTROL, message, grant.reason, grant.error)
            return
        outcome = await store.apply_grant(grant)
        metrics.TOKEN_GRANTS.labels(outcome).inc()
        log.info("token_grant", token_id=grant.token_id, role=grant.role,
                 revoked=grant.revoked, outcome=outcome)
        if outcome == "conflict":
            await park(topology.AUDIT_CONTROL, message, "token_hash_conflict",
                       "another token id already has this token hash")

    async def on_refusal(request: web.Request, principal: Principal | None, reason: str) -> None:
        """Record a refused access (who, where, why) — never the token itself."""
        fact = AuditFact(
            id=new_id("fct"),
            kind="access.refused",
            occurred_at=utcnow(),
            service="audit",
            actor=principal.token_id if principal else None,
            reason=reason,
            details={"path": _route_path(request), "method": request.method,
                     "role": principal.role if principal else None},
        )
        try:
            await batcher.submit(fact)
        except Exception:
            log.exception("refusal_not_recorded", path=fact.details["path"], reason=reason)

    admin = settings.admin_token.get_secret_value() if settings.admin_token else None

    async def broker_ready() -> bool:
        return not connection.is_closed

    async def storage_ready() -> bool:
        return await asyncio.wait_for(store.ping(), timeout=2.0)

    consumers: list[Consumer] = []

    async def consuming() -> bool:  # false while an outage pauses a consumer
        return all(c.ready for c in consumers)

    app = make_app(
        store,
        lookup=bootstrap_lookup(admin, store.lookup),
        on_refusal=on_refusal,
        checks={"broker": broker_ready, "storage": storage_ready, "consuming": consuming},
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

    overdue = Overdue(write_aheads, store_fact, timeout=settings.outcome_timeout,
                      interval=min(settings.outcome_timeout / 4, 30.0))
    overdue.start()
    stack.push_async_callback(overdue.stop)

    # a fact is held while the database is away (submit_retrying); an outage of what else a
    # handler needs (the broker path of a parking) pauses the consumer until it answers
    control = Consumer(connection, topology.AUDIT_CONTROL, on_control, prefetch=CONTROL_PREFETCH,
                       probe=storage_ready)
    facts = Consumer(connection, topology.AUDIT_FACTS, on_fact, prefetch=settings.prefetch,
                     probe=storage_ready)
    consumers.extend((control, facts))

    async def stop_consumers() -> None:
        await asyncio.gather(facts.stop(grace), control.stop(grace))

    stack.push_async_callback(stop_consumers)
    await control.start()
    await facts.start()
    log.info("audit_started", host=settings.host, port=settings.port,
             batch_size=settings.batch_size, prefetch=settings.prefetch)


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


def _route_path(request: web.Request) -> str:
    """The path to record for a refused request: the route's template when it has variables
    (``/v1/audit/subjects/{subject}/export``), so a subject id never lands in the log in clear,
    where erasure could not reach it."""
    resource = request.match_info.route.resource
    if resource is not None and "{" in resource.canonical:
        return resource.canonical
    return _printable(request.rel_url.raw_path)


def _printable(text: str) -> str:
    """ASCII, NUL-free and bounded: a request path may hold anything a client typed."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")[
        :MAX_PATH
    ]
