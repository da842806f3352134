"""How many POSTs one endpoint may have in flight: a limit that follows the receiver.

A receiver answering in 200 ms needs 20 POSTs in flight to take 100 events/s (Little's law:
concurrency = latency x rate); a fixed limit of 10 caps it at 50/s however fast it could go,
and a limit high enough for it would let a failing receiver hold that many slots. So each
endpoint has its own limit, between 1 and a maximum, moved by what its answers say.

Which algorithm, and why: **AIMD** (additive increase, multiplicative decrease, as TCP's
congestion window and Netflix concurrency-limits' ``AIMDLimit``), with the latency test of
Netflix's ``Gradient2Limit`` added as a second reason to decrease:

- A webhook receiver tells us it is overloaded mostly by *errors*: 429, 5xx, time-outs, refused
  connections. Gradient2 ignores errors (it reads latency only) and Vegas needs the no-load
  latency, which a receiver whose latency varies from 50 to 500 ms by itself does not have.
  AIMD reacts to the errors; the halving on an error takes a failing endpoint to the minimum
  in a few round trips, so it cannot hold the others' capacity.
- Some receivers slow down before they fail (a queue builds up behind them). Gradient2's test
  catches that: the recent latency (a short average) against the endpoint's long average,
  with a tolerance of 2x (plus 50 ms). Beyond it the limit is cut by 10 % — once per round trip.
- A POST hanging far beyond the endpoint's usual latency (4x, and at least 2 s) halves the
  limit, and again each such while it keeps hanging: the POSTs already hanging then hold
  more than the limit, so no new one joins them (they end at the deliverer's time-out, and
  those time-outs, sent under the old limit, are not counted again). Halving rather than
  TCP's reset to one, because a deliverer on a loaded machine can itself pause for a second
  and must not take that for the receiver hanging.
- It grows by one per successful answer while the endpoint's jobs fill the limit (the window
  doubles each round trip, as TCP's slow start), so a busy endpoint reaches latency x rate in
  a few round trips; with spare slots it does not grow, and it slowly gives back what it does
  not use, down to the initial limit (never below it for want of work: a burst after a quiet
  spell starts there, not at 1). So for a steady receiver it settles near latency x rate.

"Once per round trip": a decrease ignores the answers to POSTs that started before the last
decrease (they say what the old limit did), so one burst of errors halves the limit once.

Everything here is pure: times are given (monotonic seconds), nothing is awaited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MINIMUM = 1
"""No endpoint goes below one POST in flight (it must be able to recover)."""
BACKOFF = 0.5
"""The limit is multiplied by this on an error (TCP's halving)."""
LATENCY_BACKOFF = 0.9
"""... and by this when the recent latency grows beyond the tolerance."""
TOLERANCE = 2.0
"""Recent latency above this multiple of the long average (plus SLACK) is a latency growth."""
SLACK = 0.05
"""Seconds added to the latency threshold: the deliverer's own event loop under load adds tens
of milliseconds to what it measures, which is not the receiver's doing."""
STALL_FACTOR = 4.0
"""A POST running longer than this multiple of the long average latency ..."""
STALL_FLOOR = 2.0
"""... and at least this many seconds means the endpoint hangs: the limit is halved."""
RECENT_WEIGHT = 0.2
"""Weight of the newest answer in the recent latency average."""
LONG_WEIGHT = 0.01
"""Weight of the newest answer in the long latency average (about the last 100 answers; it
must lag well behind the recent one for a growth to show)."""
WARM_UP = 10
"""The long average is the plain mean of the first answers, as Netflix's ExpAvgMeasurement."""
HEADROOM = 1.5
"""Unused slots are given back (one per answer) while the limit exceeds this multiple of the
endpoint's jobs in hand."""

_CONGESTION_ERRORS = frozenset({"timeout", "connection_error", "tls_error"})


def congested(status: int | None, error: str | None = None) -> bool:
    """True when an answer says the endpoint is overloaded or failing: 429, a 5xx, a time-out
    or a failed connection. Other 4xx and refusals of our own (a blocked destination, a key
    missing for custom headers) say nothing about its load."""
    if status is None:
        return error in _CONGESTION_ERRORS
    return status == 429 or status >= 500


@dataclass
class AdaptiveLimit:
    """One endpoint's concurrency limit; see the module for the rules."""

    maximum: int
    initial: int = 10
    _limit: float = field(init=False)
    recent: float | None = field(default=None, init=False)
    """Recent latency (seconds, short average of all answers); None until the first one."""
    baseline: float | None = field(default=None, init=False)
    """Long average latency of the endpoint's successful answers (seconds)."""
    _cut_at: float = field(default=-math.inf, init=False)
    _good: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.maximum < MINIMUM:
            raise ValueError(f"maximum must be at least {MINIMUM}")
        self.initial = min(max(self.initial, MINIMUM), self.maximum)
        self._limit = float(self.initial)

    @property
    def limit(self) -> int:
        """POSTs this endpoint may have in flight now."""
        return int(self._limit)

    def record(self, *, started: float, finished: float, failed: bool, demand: int) -> None:
        """Learn from one answer: the POST ran from ``started`` to ``finished``; ``failed``
        as :func:`congested` says; ``demand``: the endpoint's jobs in flight or waiting for a
        slot when it finished, this one included."""
        seconds = max(finished - started, 0.0)
        self.recent = seconds if self.recent is None else (
            self.recent + RECENT_WEIGHT * (seconds - self.recent))
        news = started >= self._cut_at  # sent under the current limit
        if failed:
            if news:
                self._cut(BACKOFF, finished)
            return
        self._good += 1
        if self.baseline is None:
            self.baseline = seconds
        else:
            weight = 1 / self._good if self._good <= WARM_UP else LONG_WEIGHT
            self.baseline += weight * (seconds - self.baseline)
            if self.baseline > TOLERANCE * self.recent:  # latency came back down: follow it
                self.baseline = max(self.recent, self.baseline * 0.95)
        if self.recent > TOLERANCE * self.baseline + SLACK:
            if news:
                self._cut(LATENCY_BACKOFF, finished)
        elif demand >= self.limit:
            self._limit = min(self._limit + 1, float(self.maximum))
        elif self._limit > HEADROOM * demand and self._limit > self.initial:
            self._limit = max(self._limit - 1, float(self.initial))

    def stalled(self, age: float, now: float) -> bool:
        """Given the age of the endpoint's oldest running POST: if it hangs (see
        STALL_FACTOR), halve the limit — at most once per that long — and say so."""
        threshold = max(STALL_FLOOR, STALL_FACTOR * (self.baseline or 0.0))
        if age <= threshold or now - self._cut_at < threshold:
            return False
        self._cut(BACKOFF, now)
        return True

    def _cut(self, factor: float, now: float) -> None:
        self._limit = max(float(MINIMUM), self._limit * factor)
        self._cut_at = now
