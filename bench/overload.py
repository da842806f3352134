"""The overload phases: offered more than it sustains, does the delivered rate hold?

For each factor (1.5 and 3 in a full run) the target is offered ``factor x S`` open-loop for
``overload_duration`` seconds, *S* being the rate it sustained in the search (its saturation when
none was found). Judged, per factor:

* **held**: the delivered rate, in 5-second windows after a fill of :data:`FILL_S` seconds, never
  falls below :data:`HOLD_SHARE` x *S* while load is on (the per-second series is kept too);
* **no crash**: every process of the target is alive at the end (the dead ones' exit codes);
* **no memory alarm**: :class:`~bench.monitor.BrokerWatch` samples over the phase and its drain;
* **drain**: the backlog left when load stops drains at >= *S*;
* **recovery**: fresh events, a light trickle (:data:`PROBE_SHARE` x *S*) published from the end
  of the load on, in consecutive 2-second batches; the p99 of each batch is compared with
  :data:`RECOVERY_FACTOR` x the p99 at ½ *S*; the time from the end of the drain to the end of
  the first batch after which every batch is under it must be <= :data:`RECOVERY_TARGET_S`.

The raw chain is offered the same multiples of its own sustained rate, side by side.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bench.load import paced
from bench.monitor import BrokerWatch

if TYPE_CHECKING:
    from bench.run import Bench, Target

FILL_S = 5.0
"""Seconds after the load starts before the delivered rate is judged (the pipeline fills; a
quarter of the load in phases shorter than 20 s)."""
WINDOW_S = 5
"""The delivered rate is judged on means over windows of this many seconds (fewer when the
load is shorter)."""
HOLD_SHARE = 0.9
PROBE_SHARE = 0.1
PROBE_STEP_S = 2.0
RECOVERY_FACTOR = 2.0
RECOVERY_TARGET_S = 30.0


def per_second(bins: list[list[float]], bin_seconds: float, start: float, end: float
               ) -> list[int]:
    """Arrivals per whole second from ``start`` to ``end`` (wall clock), from the sink's bins."""
    seconds = max(0, int(end - start))
    out = [0] * seconds
    for key, count in bins:
        i = int(key * bin_seconds - start)
        if 0 <= i < seconds:
            out[i] += int(count)
    return out


def window_means(series: list[int], skip: int, width: int) -> list[float]:
    """Means of consecutive ``width``-second windows of ``series`` after the first ``skip``."""
    rest = series[skip:]
    return [sum(rest[i:i + width]) / width for i in range(0, len(rest) - width + 1, width)]


def recovery_s(batches: list[tuple[float, float | None]], drained_at: float, limit: float
               ) -> float | None:
    """Seconds from ``drained_at`` to the end of the first probe batch after which every batch
    (``(started_at, p99)``) is under ``limit``; ``None`` if the last one is not."""
    good_from: float | None = None
    for started, p99 in batches:
        if p99 is None or p99 > limit:
            good_from = None
        elif good_from is None:
            good_from = started
    if good_from is None:
        return None
    return round(max(0.0, good_from + PROBE_STEP_S - drained_at), 1)


async def _probe(target: Target, phase: str, rate: float, start_in: float,
                 stop: asyncio.Event, window: float) -> list[tuple[str, float, int]]:
    """Fresh events from the end of the load until ``window`` s after ``stop`` is set: batches
    ``(phase, started_at, confirmed)``."""
    await asyncio.sleep(start_in)
    batches: list[tuple[str, float, int]] = []
    until: float | None = None
    while until is None or time.time() < until:
        name = f"{phase}q{len(batches)}"
        started = time.time()
        stats = await paced(target.send, name, rate / target.fanout, PROBE_STEP_S)
        batches.append((name, started, stats.confirmed * target.fanout))
        if until is None and stop.is_set():
            until = time.time() + window
    return batches


async def _batch_p99(bench: Bench, target: Target, batches: list[tuple[str, float, int]],
                     timeout: float) -> list[tuple[float, float | None]]:
    """Each probe batch's p99 once it is delivered (or ``timeout`` s have passed)."""
    for name, _, expected in batches[-3:]:  # the last ones may still be on their way
        await bench.drain(name, target.group, expected, timeout)
    out: list[tuple[float, float | None]] = []
    for name, started, _ in batches:
        stats = await bench.sink.stats(name)
        out.append((started, (stats["latency_ms"].get(target.group) or {}).get("p99")))
    return out


@dataclass
class Overloaded:
    """A target of the overload phases with what it is judged against."""

    target: Target
    sustained: float
    """Its sustained rate (deliveries/s): the *S* the factors multiply."""
    baseline_p99: float | None
    """Its p99 at ½ *S*, ms: the recovery is judged against it."""
    crashed: Callable[[], dict[str, list[int | None]]]
    """Its processes that are not running: name → exit codes."""


async def step(bench: Bench, one: Overloaded, factor: float, watch: BrokerWatch
               ) -> dict[str, Any]:
    """One overload phase at ``factor x S`` and its verdicts."""
    opts = bench.opts
    target, sustained, baseline_p99 = one.target, one.sustained, one.baseline_p99
    length = opts.overload_duration
    rate = factor * sustained
    stop = asyncio.Event()
    probe_rate = max(2.0 * target.fanout, PROBE_SHARE * sustained)
    probe: asyncio.Task[list[tuple[str, float, int]]] | None = None
    recovery_window = opts.recovery_window

    async def start_probe() -> None:
        nonlocal probe
        probe = asyncio.create_task(_probe(target, f"fresh{uuid.uuid4().hex[:6]}", probe_rate,
                                           length, stop, recovery_window))

    began = time.time()
    await watch.start()
    try:  # under a name of its own: not a paced phase of the sweeps (sustained rate, plot)
        result = await bench.phase(
            replace(target, name=f"{target.name}-overload"), "paced", rate=rate,
            duration=length, label=f"{target.name} overload {factor:g}xS", during=start_probe,
            drain_timeout=opts.overload_drain_timeout)
    finally:
        stop.set()
        batches = await probe if probe is not None else []
        await watch.stop()
    result["overload_factor"] = factor
    sink = await bench.sink.stats(result["phase"])
    load_start, load_end = result["load_started_at"], result["load_ended_at"]
    drained_at = result["drained_at"]
    delivered_by_end = sum(
        n for k, n in sink["bins"].get(target.group, []) if k * sink["bin_seconds"] < load_end)
    series = per_second(sink["bins"].get(target.group, []), sink["bin_seconds"], load_start,
                        drained_at)
    loaded = series[:int(load_end - load_start)]
    fill = int(min(FILL_S, length / 4))
    width = max(1, min(WINDOW_S, len(loaded) - fill))
    windows = window_means(loaded, fill, width)
    backlog = result["expected"] - delivered_by_end
    drain_s = max(0.0, drained_at - load_end)
    complete = result["delivered"] >= result["expected"]
    drain_rate = round(backlog / drain_s, 1) if backlog > 0 and drain_s > 0 and complete \
        else None
    limit = RECOVERY_FACTOR * baseline_p99 if baseline_p99 else None
    p99s = await _batch_p99(bench, target, batches, opts.drain_timeout)
    recovered = recovery_s(p99s, drained_at, limit) if limit is not None and complete else None
    dead = one.crashed()
    broker = watch.window(began)
    floor = HOLD_SHARE * sustained
    return {
        "factor": factor,
        "sustained_dps": round(sustained, 1),
        "offered_dps": round(rate, 1),
        "duration_s": length,
        "phase": result["phase"],
        "delivered_per_second": series,
        "delivered_min_window_dps": round(min(windows), 1) if windows else None,
        "delivered_mean_dps_while_loaded": round(
            sum(loaded[fill:]) / max(1, len(loaded) - fill), 1),
        "fill_s": fill,
        "window_s": width,
        "held": bool(windows) and min(windows) >= floor,
        "backlog_at_load_end": backlog,
        "drain_s": round(drain_s, 1),
        "drain_dps": drain_rate,
        "drained_at_or_above_s": drain_rate is not None and drain_rate >= sustained
        if backlog > 0 else complete,
        "delivered": result["delivered"],
        "expected": result["expected"],
        "duplicates": result["duplicates"],
        "probe_dps": round(probe_rate, 1),
        "probe_p99_ms": [[round(t - drained_at, 1), p] for t, p in p99s],
        "recovery_p99_limit_ms": round(limit, 1) if limit else None,
        "p99_recovered_s_after_drain": recovered,
        "recovered": recovered is not None and recovered <= RECOVERY_TARGET_S,
        "crashed": dead,
        "broker": broker,
        "memory_alarm": bool(broker.get("alarms")),
        "cpu_pct": result["cpu_pct"],
        "generator_max_lag_s": result["generator_max_lag_s"],
    }


async def scenario(bench: Bench, targets: list[Overloaded], watch: BrokerWatch
                   ) -> dict[str, Any]:
    """Every factor of the options for every target, in the order given."""
    out: dict[str, Any] = {"factors": list(bench.opts.overload_factors), "fill_s": FILL_S,
                           "window_s": WINDOW_S, "hold_share": HOLD_SHARE,
                           "recovery_target_s": RECOVERY_TARGET_S, "runs": {}}
    for one in targets:
        out["runs"][one.target.name] = [
            await step(bench, one, factor, watch) for factor in bench.opts.overload_factors]
    return out
