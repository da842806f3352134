"""Pure pacing decisions for rate-limited endpoints: which paced queue, and when the next POST.

No I/O and no clock of its own: every time is a ``now`` passed in (monotonic seconds).

Where: a rate-limited endpoint's deliveries all go through one paced queue
(:func:`shard_of`, a stable hash of the endpoint id over ``topology.PACED_SHARDS`` queues).
Each paced queue has one active consumer (RabbitMQ's single-active-consumer), so one process
paces an endpoint however many deliverer replicas run, and a local :class:`Pacer` is enough.

When: a GCRA (generic cell rate algorithm, the "virtual scheduling" form). An endpoint with
``per_second = r`` and ``burst = b`` gets an emission interval ``T = (1 + margin) / r`` and a
tolerance ``tau = (b - 1) * T``; its theoretical arrival time ``tat`` says when the next
POST would be on schedule. A POST may go at ``now`` if ``now >= tat - tau``; then
``tat = max(tat, now) + T``. So over any span of ``w`` seconds at most ``b + w / T`` POSTs
go: evenly spaced with ``b = 1``, ``b`` back to back after a quiet spell.

The ``margin`` (``DIHYA_DELIVERER_PACE_MARGIN``, 10 % by default) spaces POSTs a little wider
than the limit: what a receiver counts is arrivals, and the network and its own event loop
move them (by tens of milliseconds on a busy host), so POSTs spaced exactly ``1 / r`` apart
would now and then show ``r + 1`` in a one-second window. 10 %: at 5/s, 100 ms of slack over
a window (measured: with 5 % — 50 ms — a 5/s endpoint showed 6 in one window in a run on a
loaded 2-vCPU machine, two deliverers and a test process at 375 deliveries/s).

A takeover (another process becomes a paced queue's active consumer, or this one restarts)
knows nothing of what the previous one sent just before. After a POST at ``t`` the previous
pacer's ``tat`` is at most ``t + tau + T``. RabbitMQ does not tell a consumer it has become the
active one, so the deliverer calls :meth:`Pacer.activate` for a paced queue at its first
message, and at every redelivered one (a takeover hands over the unacknowledged messages as
redelivered, first): from then on, no endpoint of that queue has a ``tat`` below
``activated + b * T`` (what it knew is kept: a ``Retry-After`` hold stays). So the first POSTs
after a takeover wait one interval and never exceed the limit, and once ``b * T`` has passed an
endpoint is as fresh.

A job whose turn is too far off is not held (it would keep a prefetch slot of its paced queue,
which other endpoints share): it goes back through a defer tier and returns about when its
turn comes (:meth:`Pacer.promise`). Each deferred job is promised the turn after the one
deferred before it, so a backlog comes back spread at the endpoint's pace instead of all at
once (which would defer most of it again, at a fraction of the rate).

A receiver's ``429``/``503`` with ``Retry-After`` wins: :meth:`Pacer.hold` keeps the whole
endpoint quiet until then (the failed delivery itself is retried after at least that long).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from shared.contracts import RateLimit

REMEMBERED = 10_000
"""Endpoints whose schedule is kept; past it, the ones already back on schedule are dropped
(for them a fresh start is the same)."""

EPSILON = 1e-9
"""A wait shorter than this is none (floating-point leftovers of ``tat - tau``)."""


def shard_of(endpoint_id: str, shards: int) -> int:
    """The paced queue of ``endpoint_id``: stable across processes and versions (CRC-32,
    not Python's salted ``hash``)."""
    return zlib.crc32(endpoint_id.encode()) % shards


def interval(limit: RateLimit, margin: float) -> float:
    """Seconds between two evenly paced POSTs of an endpoint with ``limit``."""
    return (1.0 + margin) / limit.per_second


def defer_tier(wait_s: float, tiers_ms: Iterable[int]) -> tuple[int, int]:
    """The defer tier (ms) and the message's own delay (ms) for a job to come back in
    ``wait_s``: the smallest tier that long, or the longest (the job then comes back early and
    is promised a turn again)."""
    return tier_at_least(max(1, math.ceil(wait_s * 1000)), tiers_ms)


def tier_at_least(want_ms: int, tiers_ms: Iterable[int]) -> tuple[int, int]:
    """The smallest tier (ms) of ``tiers_ms`` at least ``want_ms`` long and the message's own
    delay, ``want_ms``; without one that long, the longest tier, in full."""
    tiers = sorted(tiers_ms)
    for tier in tiers:
        if tier >= want_ms:
            return tier, want_ms
    return tiers[-1], tiers[-1]


@dataclass
class _Schedule:
    tat: float


class Pacer:
    """The GCRA of every endpoint this process paces (see the module)."""

    def __init__(self, started: float, margin: float = 0.1, shards: int = 8) -> None:
        if margin < 0:
            raise ValueError("the margin must be >= 0")
        self._started = started
        self._margin = margin
        self._shards = shards
        self._active_since: dict[int, float] = {}
        self._schedules: dict[str, _Schedule] = {}
        self._promised: dict[str, float] = {}

    def activate(self, shard: int, now: float) -> None:
        """This process may have just become the active consumer of paced queue ``shard``:
        its endpoints start as after a takeover (see the module)."""
        self._active_since[shard] = now

    def _tat(self, endpoint: str, limit: RateLimit, now: float) -> float:
        since = self._active_since.get(shard_of(endpoint, self._shards), self._started)
        floor = since + limit.burst * interval(limit, self._margin)
        known = self._schedules.get(endpoint)
        return max(now if known is None else known.tat, floor)

    def wait(self, endpoint: str, limit: RateLimit, now: float) -> float:
        """Seconds until ``endpoint`` may have its next POST (0: now). Books nothing."""
        step = interval(limit, self._margin)
        tau = (limit.burst - 1) * step
        wait = self._tat(endpoint, limit, now) - tau - now
        return wait if wait > EPSILON else 0.0

    def sent(self, endpoint: str, limit: RateLimit, now: float) -> None:
        """Record a POST of ``endpoint`` at ``now`` (one :meth:`wait` allowed)."""
        step = interval(limit, self._margin)
        tat = max(self._tat(endpoint, limit, now), now) + step
        self._schedules[endpoint] = _Schedule(tat)
        if len(self._schedules) > REMEMBERED:
            self._forget(now)

    def late(self, endpoint: str, granted: float, written: float) -> None:
        """A POST granted at ``granted`` left only at ``written`` (a busy event loop, a slow
        connect): the endpoint's schedule moves by the delay, so the next POST keeps its
        distance from the one that really left, not from its grant."""
        known = self._schedules.get(endpoint)
        if known is not None and written > granted:
            known.tat += written - granted

    def hold(self, endpoint: str, limit: RateLimit, until: float) -> None:
        """No POST of ``endpoint`` before ``until`` (a receiver's ``Retry-After``)."""
        tau = (limit.burst - 1) * interval(limit, self._margin)
        tat = max(self._tat(endpoint, limit, until), until + tau)
        self._schedules[endpoint] = _Schedule(tat)

    def expected_wait(self, endpoint: str, limit: RateLimit, now: float, queued: int) -> float:
        """How long a new job of ``endpoint`` would wait with ``queued`` jobs ahead of it."""
        return self.wait(endpoint, limit, now) + queued * interval(limit, self._margin)

    def promise(self, endpoint: str, limit: RateLimit, now: float, queued: int) -> float:
        """Seconds a job of ``endpoint`` deferred at ``now`` should wait before it comes back:
        past the ``queued`` jobs waiting here and past every job deferred before it."""
        step = interval(limit, self._margin)
        wait = max(self.expected_wait(endpoint, limit, now, queued),
                   self._promised.get(endpoint, now) - now)
        self._promised[endpoint] = now + wait + step
        if len(self._promised) > REMEMBERED:
            self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        for endpoint in [e for e, s in self._schedules.items() if s.tat <= now]:
            del self._schedules[endpoint]
        for endpoint in [e for e, t in self._promised.items() if t <= now]:
            del self._promised[endpoint]
