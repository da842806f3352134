"""The realistic-receivers phase: receivers that take time, and one hot endpoint.

Receivers answer in 50-500 ms, not the sink's 1 ms. Here ``real-*`` endpoints answer after a
log-normal delay (median 50 ms, p99 500 ms: sigma = ln(10) / 2.326) and the ``hot`` endpoint
after 200 ms, offered 200 events/s: it needs ~40 deliveries in flight (Little's law), four
times the deliverer's old fixed limit of 10 per endpoint. The figure: the hot endpoint's
delivered rate over its offered rate (target >= 0.95), with the other endpoints' rate and
latency beside it. The sink applies the delays (:func:`delay_for`).
"""

from __future__ import annotations

import math
import random
import uuid
from typing import TYPE_CHECKING, Any

from bench.load import Send, paced

if TYPE_CHECKING:
    from bench.run import Bench, Options, Target

HOT_DELAY = 0.2
"""Seconds the hot endpoint takes to answer."""
REAL_MEDIAN = 0.05
REAL_P99 = 0.5
_SIGMA = math.log(REAL_P99 / REAL_MEDIAN) / 2.326
REAL_CAP = 5.0
"""No real-* answer takes longer than this (the log-normal's tail is unbounded)."""


def delay_for(name: str, rng: random.Random) -> float:
    """Seconds the sink's endpoint ``name`` takes to answer (0 for all but hot and real-*)."""
    if name == "hot":
        return HOT_DELAY
    if name.startswith("real-"):
        return min(REAL_CAP, rng.lognormvariate(math.log(REAL_MEDIAN), _SIGMA))
    return 0.0


async def scenario(bench: Bench, hot: Target, real_send: Send, opts: Options) -> dict[str, Any]:
    """The hot endpoint paced at ``opts.hot_rate`` while the real-* ones get
    ``opts.real_rate`` deliveries/s between them, for ``opts.realistic_duration``."""
    real_phase = f"real-{uuid.uuid4().hex[:6]}"

    async def others() -> dict[str, Any]:
        stats = await paced(real_send, real_phase, opts.real_rate / opts.real_endpoints,
                            opts.realistic_duration)
        return stats.as_json()

    result = await bench.phase(
        hot, "paced", rate=opts.hot_rate, duration=opts.realistic_duration, during=others,
        label=f"realistic: hot endpoint {HOT_DELAY * 1000:g} ms")
    real = await bench.sink.stats(real_phase)
    offered = result["offered_dps"] or 0.0
    return {
        "hot_delay_ms": HOT_DELAY * 1000,
        "real_answer_ms": {"median": REAL_MEDIAN * 1000, "p99": REAL_P99 * 1000},
        "hot_offered_dps": offered,
        "hot_delivered_dps": result["throughput_dps"],
        "hot_delivered_over_offered": round(result["throughput_dps"] / offered, 3)
        if offered else None,
        "hot_by_third_of_window": result["thirds_dps"],
        "hot_latency_ms": result["latency_ms"],
        "real_offered_dps": opts.real_rate,
        "real_delivered": sum(real["by_endpoint"].values()),
        "real_latency_ms": real["latency_ms"].get("real"),
        "deferred_jobs": result.get("deferred"),
        "phase": result["phase"],
    }
