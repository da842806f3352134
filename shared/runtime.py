"""Process entry point helper: uvloop, signal handling, and an orderly stop.

Every ``python -m services.<name>`` calls :func:`run` with a coroutine that starts the service
and returns an async ``stop`` callable. SIGTERM or SIGINT triggers ``stop`` (stop consuming,
finish or hand back in-flight work, close connections) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

import structlog

Stop = Callable[[], Awaitable[None]]

log = structlog.get_logger("dihya.runtime")

GC_THRESHOLDS = (20_000, 20, 20)
"""The cyclic collector's thresholds once a service is up. Nearly everything a message
allocates is freed by reference counting; at CPython's default (a young-generation pass every
700 net allocations) the collector ran many times per batch of messages for little to find."""


def run(start: Callable[[], Awaitable[Stop]]) -> None:
    """Run a service until SIGTERM/SIGINT, then stop it gracefully."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_main(start))
    else:
        uvloop.run(_main(start))


async def _main(start: Callable[[], Awaitable[Stop]]) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    stop = await start()
    gc.freeze()  # what start-up built (modules, settings, pools) is not scanned again
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("service_started")
    await stopping.wait()
    log.info("service_stopping")
    await stop()
    log.info("service_stopped")
