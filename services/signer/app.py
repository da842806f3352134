"""Signer wiring: keystore, secret cache, the consumers and the ops HTTP server.

The handlers are in ``consumer.py``; this module only opens, connects and closes.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from services.signer.consumer import SecretCache, Signer
from services.signer.settings import Settings
from services.signer.store import MIGRATIONS, Keystore
from shared import topology
from shared.broker import Consumer, Publisher, connect, declare_topology
from shared.db import make_engine, migrate
from shared.runtime import Stop
from shared.web import add_ops_routes, errors_middleware, serve

log = structlog.get_logger("dihya.signer")


def _broker_ready(connection: AbstractRobustConnection) -> bool:
    return not connection.is_closed and connection.connected.is_set()


async def start(settings: Settings) -> Stop:
    """Start the signer; the returned ``stop`` finishes or hands back in-flight work."""
    cipher = settings.cipher()  # a ConfigError here, before anything is opened
    stack = contextlib.AsyncExitStack()
    try:
        engine = make_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        await migrate(engine, MIGRATIONS)
        keystore = Keystore(engine, cipher)

        connection = await connect(settings.amqp_url.get_secret_value(), service="signer",
                                   heartbeat=settings.amqp_heartbeat,
                                   fast_path=settings.amqp_fast_path)
        stack.push_async_callback(connection.close)
        await declare_topology(connection)
        publisher = await Publisher.open(connection, timeout=settings.publish_timeout)
        stack.push_async_callback(publisher.close)

        app = web.Application(middlewares=[errors_middleware])

        async def broker_ready() -> bool:
            return _broker_ready(connection)

        consumers: list[Consumer] = []

        async def consuming() -> bool:  # false while an outage pauses a consumer
            return all(c.ready for c in consumers)

        add_ops_routes(app, {"broker": broker_ready, "storage": keystore.ping,
                             "consuming": consuming})
        runner = await serve(app, settings.host, settings.port)
        stack.push_async_callback(runner.cleanup)

        signer = Signer(settings, keystore, SecretCache(keystore, settings.cache_ttl), publisher)
        # an outage of the keystore's database pauses them until it answers again
        consumers.extend((
            Consumer(connection, topology.SIGNER_CONTROL, signer.on_control,
                     prefetch=settings.prefetch, probe=keystore.ping),
            Consumer(connection, topology.SIGNER_JOBS, signer.on_job,
                     prefetch=settings.prefetch, probe=keystore.ping),
            Consumer(connection, topology.SIGN_NOW, signer.on_sign_now,
                     prefetch=settings.prefetch, probe=keystore.ping),
        ))

        async def stop_consumers() -> None:
            await asyncio.gather(*(c.stop(settings.shutdown_grace) for c in consumers))

        stack.push_async_callback(stop_consumers)
        for consumer in consumers:
            await consumer.start()
    except BaseException:
        await stack.aclose()
        raise
    log.info("signer_started", port=settings.port, prefetch=settings.prefetch)
    return stack.aclose
