"""The deliverer's own CPU per delivery, measured alone: ``python -m bench.deliverer_cpu``.

Runs the deliverer's job handler (``Deliverer.on_job``, wired as ``services.deliverer.app``
wires it: one HTTP client, the write-ahead and attempt fact publishers on a confirming
channel) in this process on ``--messages`` signed deliveries of a 1 KiB event, ``--in-flight``
at a time, POSTing them to a receiver in a process of its own (aiohttp, answers 200 ``ok``)
on 127.0.0.1; the facts go to a throw-away virtual host of the RabbitMQ at ``--amqp-url``
(``rabbitmqctl``). Prints this process's CPU time per delivery (``time.process_time``) for
each of ``--rounds`` rounds, their median, and the machine's load average.

What it leaves out: consuming the job and acking it (the same before and after any change to
the handler; ``python -m bench.fastpath`` measures them), the receiver's and RabbitMQ's CPU.
What it is for: comparing two commits of the handler — run it from each worktree, alternating
— with far less noise than a whole ``bin/bench`` run, whose figure is every process's. Decide
with both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

SECRET = uuid.uuid4().hex
"""The endpoints' secret (the receiver does not check signatures)."""
ENDPOINTS = 10
"""Endpoints the deliveries go to, in turn (all on the one receiver): with 50 in flight, 5 each,
under an endpoint's initial limit of 10, so none waits for a slot or is deferred."""


def _serve(port: int) -> None:
    """The receiver: every POST answered 200 ``ok`` once its body is read."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/{name}", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _delivered() -> float:
    """POSTs answered 2xx so far in this process."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("dihya_deliverer_attempts_total", {
        "outcome": "delivered", "reason": "ok", "status_class": "2xx"}) or 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signed(port: int, count: int) -> list[bytes]:
    """``count`` signed deliveries (encoded as the signer publishes them), to
    :data:`ENDPOINTS` endpoints in turn."""
    from bench.load import EventFactory
    from services.signer.decisions import sign
    from shared.contracts import DeliveryJob, Event, encode

    events = EventFactory("template.created", 1024)
    now = datetime.now(UTC)
    out = []
    for seq in range(count):
        event = Event.model_validate_json(events.make("cpu", seq)).model_copy(
            update={"timestamp": now})
        endpoint = seq % ENDPOINTS
        job = DeliveryJob(delivery_id=f"dlv_cpu{seq}", endpoint_id=f"ep_{endpoint}",
                          url=f"http://127.0.0.1:{port}/hooks/fast-{endpoint}", event=event)
        out.append(encode(sign(job, [SECRET], nonce=uuid.uuid4().hex, now=now)))
    return out


class _Message:
    """What the handler reads of a consumed message (``shared.broker.Delivery``'s fields)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.redelivered = False
        self.headers: dict[str, Any] = {}


async def _round(url: str, bodies: list[bytes], in_flight: int) -> float:
    """µs of CPU per delivery of one round (a fresh deliverer, warmed up on 200 first)."""
    from services.deliverer.client import make_client
    from services.deliverer.consumer import Deliverer, WaitTiers
    from services.deliverer.settings import Settings
    from shared.broker import FactPublisher, Publisher, connect, declare_topology
    from shared.runtime import GC_THRESHOLDS

    settings = Settings(allowed_networks="127.0.0.0/8", prefetch=in_flight)
    connection = await connect(url, service="bench-deliverer-cpu",
                               fast_path=settings.amqp_fast_path)
    try:
        await declare_topology(connection, retry_delays_ms=settings.retry_delays_ms,
                               defer_delays_ms=settings.defer_delays_ms)
        publisher = await Publisher.open(connection)
        facts, starts = FactPublisher(publisher), FactPublisher(publisher, linger=0.0)
        client = make_client(settings)
        deliverer = Deliverer(settings, client, publisher, WaitTiers(connection, ()), facts,
                              starts=starts)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def worker() -> None:
            while not queue.empty():
                await deliverer.on_job(_Message(queue.get_nowait()))  # type: ignore[arg-type]

        async def run(batch: list[bytes]) -> None:
            for body in batch:
                queue.put_nowait(body)
            await asyncio.gather(*(worker() for _ in range(in_flight)))

        await run(bodies[:200])  # warm-up: connections pooled, caches filled
        gc.collect()  # as a service once started (shared.runtime)
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        delivered = _delivered()
        started = time.process_time()
        await run(bodies[200:])
        spent = time.process_time() - started
        if _delivered() - delivered != len(bodies) - 200:  # none deferred, none failed
            raise RuntimeError(f"{_delivered() - delivered:g} of {len(bodies) - 200} delivered")
        await facts.close()
        await starts.close()
        await client.close()
        await publisher.close()
        return spent / (len(bodies) - 200) * 1e6
    finally:
        await connection.close()


async def _main(url: str, port: int, messages: int, rounds: int, in_flight: int) -> None:
    for _ in range(100):  # until the receiver listens
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    bodies = _signed(port, messages + 200)
    figures = []
    for number in range(rounds):
        figures.append(await _round(url, bodies, in_flight))
        print(f"round {number + 1}: {figures[-1]:.1f} µs of CPU per delivery", flush=True)
    print(f"median {statistics.median(figures):.1f} µs (min {min(figures):.1f}, "
          f"max {max(figures):.1f}); load average {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.deliverer_cpu",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--amqp-url", default=os.environ.get(
        "DIHYA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    from bench.run import vhost
    from shared.logging import setup

    setup("deliverer", level="info")  # as the service logs: a delivered POST's line is debug
    import uvloop  # as the services run (shared.runtime)
    port = _free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "bench.deliverer_cpu", "--serve",
                                 str(port)])
    try:
        with vhost(args.amqp_url) as url:
            uvloop.run(_main(url, port, args.messages, args.rounds, args.in_flight))
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
