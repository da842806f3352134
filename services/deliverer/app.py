"""Deliverer wiring: one shared HTTP client, the jobs consumer, the paced queues' consumers
(rate-limited endpoints, one active consumer each among the replicas), the catch-up sweeper
when DIHYA_DELIVERER_CATCH_UP is on (one active consumer too) and the ops HTTP server.
The handlers are in :mod:`services.deliverer.consumer`."""

from __future__ import annotations

import contextlib

import structlog
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from aiohttp.abc import AbstractResolver

from services.deliverer.catchup import REQUESTS_PREFETCH, Requests, Sweeper
from services.deliverer.client import make_client
from services.deliverer.consumer import Deliverer, WaitTiers
from services.deliverer.ordered import SignNow
from services.deliverer.settings import Settings
from shared import topology
from shared.broker import (
    Consumer,
    FactPublisher,
    Publisher,
    connect,
    declare_topology,
)
from shared.runtime import Stop
from shared.web import add_ops_routes, errors_middleware, serve

log = structlog.get_logger("dihya.deliverer")


def _broker_ready(connection: AbstractRobustConnection) -> bool:
    return not connection.is_closed and connection.connected.is_set()


async def start(settings: Settings, *, resolver: AbstractResolver | None = None) -> Stop:
    """Start the deliverer; the returned ``stop`` finishes or hands back in-flight work.
    ``resolver``: see :func:`~services.deliverer.client.make_client`."""
    stack = contextlib.AsyncExitStack()
    try:
        connection = await connect(settings.amqp_url.get_secret_value(), service="deliverer",
                                   heartbeat=settings.amqp_heartbeat,
                                   fast_path=settings.amqp_fast_path)
        stack.push_async_callback(connection.close)
        await declare_topology(connection, retry_delays_ms=settings.retry_delays_ms,
                               defer_delays_ms=settings.defer_delays_ms)
        publisher = await Publisher.open(connection, timeout=settings.publish_timeout)
        stack.push_async_callback(publisher.close)
        facts = FactPublisher(publisher)
        stack.push_async_callback(facts.close, settings.shutdown_grace)
        starts = FactPublisher(publisher, linger=0.0)
        stack.push_async_callback(starts.close, settings.shutdown_grace)
        client = make_client(settings, resolver)
        stack.push_async_callback(client.close)

        app = web.Application(middlewares=[errors_middleware])

        async def broker_ready() -> bool:
            return _broker_ready(connection)

        consumers: list[Consumer] = []

        async def consuming() -> bool:  # false while an outage pauses the consumer
            return all(c.ready for c in consumers)

        add_ops_routes(app, {"broker": broker_ready, "consuming": consuming})
        runner = await serve(app, settings.host, settings.port)
        stack.push_async_callback(runner.cleanup)

        tiers = WaitTiers(connection, settings.retry_delays_ms,
                          timeout=settings.publish_timeout)
        sign_now = SignNow(connection, settings.sign_now_timeout)
        stack.push_async_callback(sign_now.close)
        requests = Requests(settings, publisher) if settings.catch_up else None
        deliverer = Deliverer(settings, client, publisher, tiers, facts, resolver=resolver,
                              starts=starts, sign_now=sign_now, catch_up=requests)
        # the broker path is its one dependency (the consumer's default probe)
        stack.push_async_callback(deliverer.drain, settings.shutdown_grace)
        # the paced queues and the FIFO lanes have one active consumer each, broker-wide
        queues = [(topology.DELIVERER_JOBS, deliverer.on_job, settings.prefetch)]
        queues += [(topology.paced_queue(shard), deliverer.on_paced_job, settings.paced_prefetch)
                   for shard in range(topology.PACED_SHARDS)]
        queues += [(topology.fifo_queue(lane), deliverer.on_fifo_job, settings.fifo_prefetch)
                   for lane in range(topology.FIFO_LANES)]
        sweeper: Sweeper | None = None
        if settings.catch_up:  # one active consumer among the replicas sweeps
            sweeper = Sweeper(settings, connection, publisher, tiers)
            queues.append((topology.CATCH_UP, sweeper.on_request, REQUESTS_PREFETCH))
        for queue, handler, prefetch in queues:
            consumer = Consumer(connection, queue, handler, prefetch=prefetch)
            consumers.append(consumer)
            stack.push_async_callback(consumer.stop, settings.shutdown_grace)
            await consumer.start()
        if sweeper is not None:  # at stop, before the consumers: a sweep may take minutes
            stack.push_async_callback(sweeper.close)
        # runs before the paced consumers stop: no turn given once another replica may pace
        stack.callback(deliverer.stop_pacing)
    except BaseException:
        await stack.aclose()
        raise
    log.info("deliverer_started", port=settings.port, prefetch=settings.prefetch,
             retry_schedule=settings.retry_schedule, catch_up=settings.catch_up)
    return stack.aclose
