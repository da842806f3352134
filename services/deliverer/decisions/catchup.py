"""Pure catch-up decisions: when to ask for a sweep, which tiers it reads, which side queue is
which, and where each waiting retry goes (docs/operations.md, "Catch-up").

No I/O and no clock of their own (``now`` is passed in): unit-tested alone, the ordering rules
with hypothesis (``tests/unit/test_deliverer_catchup.py``).

A retry tier releases a message only once the one ahead of it has expired, so the order of a
tier is part of its schedule. A sweep keeps it: the retries it does not send early go, in the
order it reads them, to the tier's empty side queue, each with the wait it had left — the side
queue holding the older ones is read first (:func:`sides`), then the tier itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared import topology
from shared.contracts import DeliveryJob

BROKER_HEADERS = frozenset({"x-death", "x-delivery-count", "x-first-death-exchange",
                            "x-first-death-queue", "x-first-death-reason",
                            "x-last-death-exchange", "x-last-death-queue",
                            "x-last-death-reason"})
"""Headers the broker sets on a dead-lettered or redelivered message: not carried over when a
sweep publishes a retry again (the broker sets them afresh)."""


def retry_headers(endpoint_id: str, now_ms: int, delay_ms: int) -> dict[str, Any]:
    """The headers of a retry published to a wait tier at ``now_ms`` (epoch ms) to wait
    ``delay_ms``: its endpoint, when it was queued and when its wait ends, so a sweep decides
    without parsing the body, keeps the due time and knows the order."""
    return {topology.ENDPOINT_HEADER: endpoint_id, topology.QUEUED_HEADER: now_ms,
            topology.DUE_HEADER: now_ms + delay_ms}


def on_schedule(job: DeliveryJob, schedule: tuple[int, ...], jitter: float,
                now: datetime) -> bool:
    """Whether attempt ``job.attempt`` (≥ 2) of ``job`` came after its full wait: at least the
    shortest delay its tier draws (``delay * (1 - jitter)``) after the previous attempt started.
    A retry a sweep sent early did not, so its success asks for no further sweep."""
    if job.attempt < 2 or not job.history or len(schedule) < job.attempt - 1:
        return False
    shortest_ms = schedule[job.attempt - 2] * (1 - jitter)
    waited_ms = (now - job.history[-1].at).total_seconds() * 1000
    return waited_ms >= shortest_ms


def wants_catch_up(job: DeliveryJob, delivered: bool, schedule: tuple[int, ...],
                   jitter: float, now: datetime) -> bool:
    """Whether a delivered attempt says its endpoint is back after failing: a retry on its
    schedule (:func:`on_schedule`). Not for a rate-limited endpoint (its pace, not the
    schedule, bounds how fast a backlog drains: its retries keep their schedule) nor an
    ordered one (its retries wait in the deliverer, never in a tier)."""
    return (delivered and job.rate_limit is None and job.fifo_key is None
            and on_schedule(job, schedule, jitter, now))


class Debounce:
    """At most one request per endpoint per ``interval`` seconds, over the last ``size``
    endpoints seen (an older one may ask again sooner: a repeat costs the sweeper nothing)."""

    def __init__(self, interval: float, size: int = 10_000) -> None:
        self._interval = interval
        self._size = size
        self._last: OrderedDict[str, float] = OrderedDict()

    def allow(self, endpoint_id: str, now: float) -> bool:
        """True (and remembered) if ``endpoint_id`` may ask now (``now``: monotonic)."""
        last = self._last.get(endpoint_id)
        if last is not None and now - last < self._interval:
            return False
        self._last[endpoint_id] = now
        self._last.move_to_end(endpoint_id)
        while len(self._last) > self._size:
            self._last.popitem(last=False)
        return True


def tiers_to_sweep(tiers: Iterable[int], min_tier_ms: int) -> tuple[int, ...]:
    """The retry tiers a sweep reads: every distinct one of ``tiers`` (the deployment's, those
    this process declared, the requests' own) of at least ``min_tier_ms``, shortest first."""
    return tuple(sorted({t for t in tiers if t >= min_tier_ms}))


def collapsed(requested_at: datetime, last_sweep_started: datetime | None) -> bool:
    """A request made before the last sweep of its endpoint started asks for nothing that
    sweep did not do."""
    return last_sweep_started is not None and requested_at < last_sweep_started


@dataclass(frozen=True)
class Sides:
    """Which side queue of a tier a sweep reads first (``source``) and which it fills
    (``dest``): names from :data:`shared.topology.SIDES`."""

    source: str
    dest: str


def sides(count_a: int, count_b: int, head_a: int | None = None,
          head_b: int | None = None) -> Sides:
    """The sides of a sweep, from the ready counts of side queues ``a`` and ``b``.

    Between sweeps at most one holds messages (a sweep empties one into the other): it is the
    source and the empty one the destination, so the moved retries follow the older ones
    already there. Both non-empty means a sweep stopped while moving one into the other: the
    destination then holds the older ones (moved first), so the source is the side whose head
    was queued later (``head_*``: :data:`~shared.topology.QUEUED_HEADER` of each one's first
    message), and the next sweep finishes the move in order. Unknown heads: ``a`` is the
    source (a guess: a wrong one makes the older retries wait behind the newer ones, at most
    one tier's TTL, never lost)."""
    a, b = topology.SIDES
    if count_a == 0 and count_b > 0:
        return Sides(source=b, dest=a)
    if count_a > 0 and count_b > 0 and head_a is not None and head_b is not None \
            and head_b > head_a:
        return Sides(source=b, dest=a)
    return Sides(source=a, dest=b)


@dataclass(frozen=True)
class SendNow:
    """To the signer now: its endpoint is caught up (``early_ms`` before its due time; 0: it
    was due anyway)."""

    early_ms: int


@dataclass(frozen=True)
class Move:
    """To the destination side queue, waiting ``expiration_ms`` more (its due time kept,
    ``due_ms``, and when it was queued, ``queued_ms``, written in its headers)."""

    due_ms: int
    expiration_ms: int
    queued_ms: int


Placement = SendNow | Move


def due_of(headers: Mapping[str, Any]) -> int | None:
    """The due time (epoch ms) in a retry's headers, ``None`` if it has none."""
    return _int(headers.get(topology.DUE_HEADER))


def queued_of(headers: Mapping[str, Any]) -> int | None:
    """When a retry was first queued in its tier (epoch ms), ``None`` if it does not say."""
    return _int(headers.get(topology.QUEUED_HEADER))


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | str):
        text = value.decode() if isinstance(value, bytes) else value
        return int(text) if text.strip().isdigit() else None
    return None


def endpoint_of(headers: Mapping[str, Any], body: bytes) -> str | None:
    """The endpoint of a retry: its header, else (a retry published before the header
    existed) the job's ``endpoint_id``; ``None`` if neither can be read."""
    value = headers.get(topology.ENDPOINT_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value:
        return value
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = parsed.get("endpoint_id") if isinstance(parsed, dict) else None
    return found if isinstance(found, str) and found else None


def place(headers: Mapping[str, Any], body: bytes, expiration_ms: int | None,
          endpoints: frozenset[str] | set[str], tier_ms: int, now_ms: int) -> Placement:
    """Where one retry read from a tier (or a side queue) goes.

    * its endpoint is one being caught up: :class:`SendNow`;
    * it is due already: :class:`SendNow` (``early_ms`` 0) — its schedule says now;
    * else :class:`Move`, keeping its due time (header :data:`~shared.topology.DUE_HEADER`).
      A retry published before that header existed has no due time: it waits its whole
      ``expiration_ms`` again from now (late by as long as it had waited, at most the tier's
      TTL), or the tier's delay if it has none. An unreadable message is moved too: what
      cannot be read is not sent early.
    """
    due = due_of(headers)
    endpoint = endpoint_of(headers, body)
    if endpoint is not None and endpoint in endpoints:
        return SendNow(early_ms=max(0, due - now_ms) if due is not None else 0)
    if due is None:
        wait = expiration_ms if expiration_ms is not None and expiration_ms > 0 else tier_ms
        due = now_ms + min(wait, topology.tier_ttl(tier_ms))
    if due <= now_ms:
        return SendNow(early_ms=0)
    queued = queued_of(headers)
    return Move(due_ms=due, expiration_ms=min(due - now_ms, topology.tier_ttl(tier_ms)),
                queued_ms=queued if queued is not None else due - tier_ms)


def carried_headers(headers: Mapping[str, Any], placement: Placement) -> dict[str, Any]:
    """The headers a swept retry is published again with: its own, without the broker's
    (:data:`BROKER_HEADERS`), with its due time when it is moved."""
    kept = {k: v for k, v in headers.items() if k not in BROKER_HEADERS}
    if isinstance(placement, Move):
        kept[topology.DUE_HEADER] = placement.due_ms
        kept[topology.QUEUED_HEADER] = placement.queued_ms
    return kept
