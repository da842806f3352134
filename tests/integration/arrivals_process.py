"""A receiver in a process of its own, for tests that time arrivals: it answers every POST with
200 and appends ``<time.monotonic()> <webhook-id>`` to the file named by its first argument, one
line per request, flushed at once. Its own interpreter and event loop, so a busy test process
(its GIL, its event loop) cannot bunch the arrivals it records; ``time.monotonic()`` is the
machine's monotonic clock, the one asyncio's ``loop.time()`` reads in the test.

Usage: ``python -m tests.integration.arrivals_process FILE PORT``; prints ``ready`` once
listening.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiohttp import web


async def main(path: str, port: int) -> None:
    with open(path, "a", buffering=1, encoding="utf-8") as out:  # noqa: ASYNC230 - one open

        async def handle(request: web.Request) -> web.Response:
            at = time.monotonic()
            await request.read()
            out.write(f"{at:.6f} {request.headers.get('webhook-id', '-')}\n")
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/{path}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()  # until SIGTERM


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
