"""A circuit breaker per endpoint: once an endpoint is known to be down, its retries wait longer.

Why: a failing endpoint's retries go through the same signer and deliverer queues as every
other endpoint's deliveries, in arrival order. Under load, an endpoint that answers 503 to
thousands of events costs two or three attempts each within minutes (the schedule's first
tiers are short), each a signing, a POST, a fact, a wait-tier publish and a dead-letter hop:
the stages run at their limit and every endpoint's deliveries queue behind that work. Once an
endpoint has failed ``after`` attempts in a row it is *open* (Convoy, Hookdeck and Hystrix
call it so), and from then on a failed attempt's retry (that ``after``-th one's included)
waits at least ``DIHYA_DELIVERER_BREAKER_WAIT`` — exactly as if the receiver had answered
with a ``Retry-After`` that long (``floor_ms`` of
:func:`services.deliverer.decisions.next_step`): the smallest tier of the delivery's schedule
at least that long, or its longest tier. Nothing else changes: every POST is still one
attempt, the delivery limit is the same (a delivery is dead-lettered later, never sooner), and
first attempts are still POSTed — they are the probes, and the endpoint's first delivered
attempt *closes* the breaker.

What counts as a failure: every retryable one (:attr:`Outcome.retryable`: 5xx, 429, other
4xx, 3xx, time-outs, connection and TLS errors), i.e. the outcomes that lead to a retry. A
failure that is not retried (410, a refused address, an unusable URL) neither counts nor
resets the count: it says nothing of whether the endpoint answers.

State: per endpoint, its consecutive failures; an endpoint that delivers is forgotten (a
success costs one dictionary lookup), so only failing endpoints are remembered, the
:data:`REMEMBERED` most recently seen (least recently used forgotten first, as
:data:`services.deliverer.slots.REMEMBERED`). A forgotten open endpoint starts closed again the
next time: it needs ``after`` more failures to open. Each deliverer replica keeps its own state
(nothing is shared): with N replicas an endpoint opens in each once that replica has seen
``after`` failures of it in a row.

Pure: no I/O and no clock (the count is of attempts, not of time).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.deliverer.decisions import Outcome, Retry, next_step
from services.deliverer.decisions.pacing import tier_at_least

REMEMBERED = 10_000
"""Failing endpoints whose count is kept (least recently used forgotten first)."""

_UNUSED = random.Random(0)
"""``next_step`` asks its generator for a jitter of zero width: no number it gives matters."""


@dataclass(frozen=True)
class Transition:
    """An endpoint's breaker changed: ``to`` open or closed, after ``failures`` failures in a
    row (for ``closed``: the run of failures its delivered attempt ended)."""

    to: Literal["open", "closed"]
    failures: int


class Breaker:
    """Consecutive failed attempts per endpoint; open from the ``after``-th (0: never).

    ``wait_ms``: the least a failed attempt's retry waits while its endpoint is open
    (:meth:`floor_ms`).
    """

    def __init__(self, after: int, wait_ms: int, remembered: int = REMEMBERED) -> None:
        if after < 0 or wait_ms < 0 or remembered < 1:
            raise ValueError("after and wait_ms must be >= 0, remembered >= 1")
        self._after = after
        self._wait_ms = wait_ms
        self._remembered = remembered
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._open = 0

    @property
    def enabled(self) -> bool:
        return self._after > 0

    def observe(self, endpoint: str, outcome: Outcome) -> Transition | None:
        """Count one attempt of ``endpoint`` that gave ``outcome``; the transition it caused,
        if any."""
        if not self._after:
            return None
        if outcome.delivered:
            failures = self._failures.pop(endpoint, None)
            if failures is None or failures < self._after:
                return None
            self._open -= 1
            return Transition("closed", failures)
        if not outcome.retryable:
            return None
        failures = self._failures.pop(endpoint, 0) + 1
        self._failures[endpoint] = failures  # (re)inserted last: the most recently used
        if len(self._failures) > self._remembered:
            _, forgotten = self._failures.popitem(last=False)
            if forgotten >= self._after:
                self._open -= 1
        if failures == self._after:
            self._open += 1
            return Transition("open", failures)
        return None

    def is_open(self, endpoint: str) -> bool:
        return bool(self._after) and self._failures.get(endpoint, 0) >= self._after

    def failures(self, endpoint: str) -> int:
        """``endpoint``'s failed attempts in a row (0 if it is not remembered failing)."""
        return self._failures.get(endpoint, 0)

    def floor_ms(self, endpoint: str) -> int | None:
        """The least a retry of ``endpoint`` waits now: the breaker's wait while it is open,
        else ``None`` (its schedule alone decides)."""
        return self._wait_ms if self.is_open(endpoint) else None

    def open_count(self) -> float:
        """Endpoints remembered open (the ``dihya_deliverer_breaker_open_endpoints`` gauge)."""
        return float(self._open)

    def __len__(self) -> int:
        """Endpoints remembered (each with at least one failure in a row)."""
        return len(self._failures)


def lengthens(floor_ms: int | None, outcome: Outcome, attempt: int,
              schedule: Sequence[int]) -> bool:
    """Whether a breaker's ``floor_ms`` makes the retry of attempt ``attempt`` (1-based) wait
    longer than its schedule and the receiver's ``Retry-After`` would have: the wait
    :func:`~services.deliverer.decisions.next_step` asks for without jitter grows. A floor at
    or below the ``Retry-After``, or a schedule whose longest tier is already the wait, changes
    nothing. For ``dihya_deliverer_breaker_lengthened_total``."""
    if floor_ms is None or not 1 <= attempt <= len(schedule):
        return False
    plain = next_step(outcome, attempt, schedule, _UNUSED, jitter=0.0)
    floored = next_step(outcome, attempt, schedule, _UNUSED, jitter=0.0, floor_ms=floor_ms)
    return isinstance(plain, Retry) and isinstance(floored, Retry) \
        and floored.delay_ms > plain.delay_ms


def applied_floor(floor_ms: int | None, outcome: Outcome, attempt: int,
                  schedule: Sequence[int]) -> int | None:
    """The floor to give :func:`~services.deliverer.decisions.next_step`: ``floor_ms`` when it
    :func:`lengthens` the retry, else ``None`` — the retry then takes its schedule's own step,
    jitter included. (Passed anyway, a floor above the schedule's longest tier would turn a
    retry already due in that tier into a wait of exactly the tier, its jitter dropped: the
    Retry-After rule's cap, with nothing gained.)"""
    return floor_ms if lengthens(floor_ms, outcome, attempt, schedule) else None


def deferral(floor_ms: int | None, due_ms: int, tiers_ms: Sequence[int]) -> tuple[int, int]:
    """The defer tier and the delay (ms) of a job put back because its endpoint has no free
    slot, its own deferral being ``due_ms`` (one of ``tiers_ms``: the n-th deferral's,
    :func:`~services.deliverer.decisions.deferred`). While the endpoint's breaker is open
    (``floor_ms``, :meth:`Breaker.floor_ms`), at least the breaker's wait: the smallest defer
    tier that long, or the longest.

    Why: a failing endpoint's limit falls to one POST in flight (each error halves it), so
    nearly all its jobs are deferred, and deferrals doubling from one second cost every one of
    them a publish, a dead-letter hop and a consume several times a minute — in a benchmark
    run, 66,000 deferrals while 20,000 deliveries piled up for an endpoint answering 503, more
    broker work than the deliveries themselves, with every other endpoint's jobs queued behind
    it. Once the endpoint is known to be down a job waits as its retry would; the one slot
    still probes it with whichever job holds it."""
    if floor_ms is None or floor_ms <= due_ms:
        return due_ms, due_ms
    return tier_at_least(floor_ms, tiers_ms)
