"""The load generator: events over AMQP (confirms awaited) or HTTP, paced or admission-controlled.

* **Paced, open loop** (:func:`paced`): message *i* is due at ``start + i / rate`` whatever
  happened to the ones before; many publishes are in flight at once, each awaiting its own
  confirm (or HTTP answer). If the generator itself falls behind its schedule, that is recorded
  (``max_lag_s``) rather than hidden.
* **Admission-controlled, closed loop** (:func:`admitted`): publish as fast as the pipeline
  drains, keeping at most ``window`` deliveries between "published" and "received by the sink".
  That finds the saturation throughput without letting any queue grow without bound (an
  unpaced publisher starves the stages downstream of it: field notes).

Every event carries ``data.bench = {"phase", "sent_at"}``: the sink computes receipt minus send.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import orjson

DETAILS = {
    "fr": "Le modèle « Bienvenue » a été créé.",
    "en": "The template “Welcome” was created.",
    "ar": "تم إنشاء القالب «مرحبا».",
    "tzm": "Yettwarna template amaynut «Ansuf».",
}


def event_id(phase: str, seq: int) -> str:
    """The event id the sink and the audit follower both parse the phase back from."""
    return f"b.{phase}.{seq}"


def phase_of(event_id_: str) -> str | None:
    parts = event_id_.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "b" else None


class EventFactory:
    """The guide's payload template, padded so the published JSON is ``size`` bytes."""

    def __init__(self, event_type: str, size: int) -> None:
        self.event_type = event_type
        probe = self._encode("", "p10", 1000, time.time())  # a typical phase and sequence
        self._pad = "x" * max(0, size - len(probe))

    def _encode(self, pad: str, phase: str, seq: int, sent_at: float) -> bytes:
        return orjson.dumps({
            "id": event_id(phase, seq),
            "event": self.event_type,
            "lang": "fr",
            "data": {"template_id": f"tpl_{seq}", "user_id": "user42", "details": DETAILS,
                     "pad": pad, "bench": {"phase": phase, "sent_at": sent_at}},
        })

    def make(self, phase: str, seq: int) -> bytes:
        return self._encode(self._pad, phase, seq, time.time())


Send = Callable[[str, int], Awaitable[None]]
"""``send(phase, seq)``: publish one event and return once it is confirmed (or raise)."""


class AmqpSender:
    """Publishes on one confirming channel: persistent, mandatory, timeout, unique message id."""

    def __init__(self, url: str, exchange: str, routing_key: str, events: EventFactory) -> None:
        self._url = url
        self._exchange_name = exchange
        self._routing_key = routing_key
        self._events = events
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def open(self) -> None:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel(publisher_confirms=True,
                                                 on_return_raises=True)
        self._exchange = (channel.default_exchange if not self._exchange_name
                          else await channel.get_exchange(self._exchange_name, ensure=False))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def __call__(self, phase: str, seq: int) -> None:
        assert self._exchange is not None
        message = aio_pika.Message(
            self._events.make(phase, seq),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=f"m.{phase}.{seq}",
        )
        await self._exchange.publish(message, self._routing_key, mandatory=True, timeout=10)


class HttpSender:
    """POSTs events to ingest's ``/v1/events`` with a publisher token; 202 expected."""

    def __init__(self, base_url: str, token: str, events: EventFactory,
                 connections: int = 64) -> None:
        self._url = f"{base_url}/v1/events"
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"}
        self._events = events
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, phase: str, seq: int) -> None:
        assert self._session is not None
        async with self._session.post(self._url, data=self._events.make(phase, seq),
                                      headers=self._headers) as resp:
            await resp.read()
            if resp.status != 202:
                raise RuntimeError(f"HTTP {resp.status}")


@dataclass
class SendStats:
    """What the generator did in one phase (wall-clock times, ``time.time()``)."""

    planned: int = 0
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0
    """When the last publish was *started*: load stops here."""
    settled: float = 0.0
    """When the last confirm (or failure) arrived."""
    max_lag_s: float = 0.0
    """Worst delay of a publish behind its schedule (paced) — the generator's own limit."""

    def as_json(self) -> dict[str, Any]:
        return {
            "planned": self.planned, "sent": self.sent, "confirmed": self.confirmed,
            "failed": self.failed, "errors": dict(self.errors),
            "publish_seconds": round(self.ended - self.started, 3),
            "generator_max_lag_s": round(self.max_lag_s, 3),
        }


class _Flight:
    """Publishes in flight, each as a task, counted into ``stats``."""

    def __init__(self, send: Send, phase: str, stats: SendStats) -> None:
        self.send = send
        self.phase = phase
        self.stats = stats
        self.tasks: set[asyncio.Task[None]] = set()

    def launch(self, seq: int) -> None:
        self.stats.sent += 1
        task = asyncio.create_task(self._one(seq))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _one(self, seq: int) -> None:
        try:
            await self.send(self.phase, seq)
        except Exception as exc:
            self.stats.failed += 1
            self.stats.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
        else:
            self.stats.confirmed += 1

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        self.stats.settled = time.time()


async def paced(send: Send, phase: str, rate: float, duration: float,
                max_in_flight: int = 2000) -> SendStats:
    """Publish ``rate * duration`` events on an open-loop schedule; await every confirm."""
    stats = SendStats(planned=max(1, round(rate * duration)))
    flight = _Flight(send, phase, stats)
    loop = asyncio.get_running_loop()
    stats.started = time.time()
    t0 = loop.time()
    seq = 0
    while seq < stats.planned:
        now = loop.time()
        due = min(stats.planned, math.floor((now - t0) * rate) + 1)
        while seq < due and len(flight.tasks) < max_in_flight:
            flight.launch(seq)
            seq += 1
        if seq < due:  # behind schedule (too many in flight, or the generator is too slow)
            stats.max_lag_s = max(stats.max_lag_s, now - (t0 + seq / rate))
        if seq < stats.planned:
            await asyncio.sleep(max(0.001, min(0.005, t0 + seq / rate - loop.time())))
    stats.ended = time.time()
    await flight.settle()
    return stats


async def admitted(send: Send, phase: str, duration: float, window: int, fanout: int,
                   delivered: Callable[[], Awaitable[int]], max_in_flight: int = 2000
                   ) -> SendStats:
    """Publish as fast as deliveries come out, keeping ≤ ``window`` deliveries outstanding."""
    stats = SendStats()
    flight = _Flight(send, phase, stats)
    loop = asyncio.get_running_loop()
    received = 0

    async def follow() -> None:
        nonlocal received
        while True:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                received = await delivered()
            await asyncio.sleep(0.05)

    follower = asyncio.create_task(follow())
    stats.started = time.time()
    deadline = loop.time() + duration
    seq = 0
    try:
        while loop.time() < deadline:
            room = (window - (seq * fanout - received)) // fanout
            room = min(room, max_in_flight - len(flight.tasks), 100)
            for _ in range(max(0, room)):
                flight.launch(seq)
                seq += 1
            await asyncio.sleep(0.005)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    stats.planned = seq
    stats.ended = time.time()
    await flight.settle()
    return stats
