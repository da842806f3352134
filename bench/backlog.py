"""The backlog phase: one endpoint down while N deliveries pile up in the retry tiers.

1. the ``down-0`` endpoint answers 503 (the sink's ``down`` control); the fast endpoints' p99
   is measured alone first (their baseline);
2. ``N`` events for ``down-0`` are published at ``backlog_fraction x S`` while the fast endpoints
   get ``backlog_others_fraction x S``: each of the N fails and waits in a retry tier (its
   first attempt, then its retries, per the deliverer's schedule); the fast endpoints' p99 then
   is judged against their baseline (<= :data:`OTHERS_P99_FACTOR` x);
3. RabbitMQ's memory is sampled over the whole phase (:class:`~bench.monitor.BrokerWatch`):
   the peak, the share of the memory limit, any alarm, and the growth per queued delivery;
4. ``down-0`` recovers: the backlog drains as its retries come due. Its drain rate (first to
   last delivery) is compared with :data:`DRAIN_SHARE` x *S*, and for every sampled event
   (the sink keeps the attempt times of every :data:`bench.sink.ATTEMPT_SAMPLE`-th) each wait
   between two attempts is compared with the schedule's delay and its jitter band.

Without the catch-up mode the drain cannot outrun the schedule: a retry leaves its tier when
its delay is over, so deliveries that failed at r/s come back at about r/s. What the phase
shows is whether they then go through at that rate, and on time. With ``--catch-up``
(DIHYA_DELIVERER_CATCH_UP=true) the first retry delivered on schedule after the recovery asks
for a sweep, and the rest comes at the pipeline's pace: ``drain_dps_from_recovery`` is the
whole backlog over the time from the recovery to its last delivery, and the attempts the sweep
sent early are counted apart in the schedule check. The schedule (``--retry-schedule``) must keep a
delivery alive longer than the pile-up lasts, or the first ones run out of attempts before the
endpoint is back (``attempts_outlast_pile_up`` says whether it did).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench.load import paced
from bench.monitor import MIB, BrokerWatch
from bench.sink import percentile

if TYPE_CHECKING:
    from bench.run import Bench, Target

DOWN = "down-0"
"""The endpoint that fails (a name the sink and the run both know)."""
OTHERS_P99_FACTOR = 2.0
DRAIN_SHARE = 0.9
EARLY_SLACK_S = 0.5
"""An attempt counts as early only if it came this much before its delay's jitter band."""
LATE_SLACK_S = 2.0


def schedule_check(sampled: dict[str, list[float]], delays_s: tuple[float, ...],
                   jitter: float, caught_up_from: float | None = None) -> dict[str, Any]:
    """Each wait between two attempts of a sampled event against the schedule: the *n*-th wait
    should last ``delays_s[n]`` ± ``jitter``. Early ones break the schedule; late ones are the
    price of a backlog (the broker or the stages behind). ``caught_up_from``: the catch-up
    mode was on and the endpoint recovered then (epoch s): an early attempt from then on is a
    catch-up attempt, early by design, counted apart (``caught_up``), not as early."""
    early = late = waits = caught_up = 0
    lateness: list[float] = []
    for times in sampled.values():
        for n, (a, b) in enumerate(itertools.pairwise(times)):
            if n >= len(delays_s):
                break
            delay = delays_s[n]
            gap = b - a
            if (caught_up_from is not None and b >= caught_up_from
                    and gap < delay * (1 - jitter) - EARLY_SLACK_S):
                caught_up += 1
                continue
            waits += 1
            if gap < delay * (1 - jitter) - EARLY_SLACK_S:
                early += 1
            over = gap - delay * (1 + jitter)
            if over > LATE_SLACK_S:
                late += 1
            lateness.append(max(0.0, over))
    lateness.sort()
    return {
        "events_sampled": len(sampled),
        "waits": waits,
        "caught_up": caught_up,
        "early": early,
        "late": late,
        "late_by_s": {"p50": round(percentile(lateness, 50), 1),
                      "p99": round(percentile(lateness, 99), 1),
                      "max": round(lateness[-1], 1)} if lateness else None,
        "respected": (waits > 0 or caught_up > 0) and early == 0,
    }


def busy_rate(bins: list[list[float]], bin_seconds: float, share: float = 0.9) -> float | None:
    """Deliveries/s over the span holding the middle ``share`` of the arrivals (from the
    sink's bins): the drain's pace once it runs, not the wait for the first retry to come due."""
    total = sum(n for _, n in bins)
    if total < 10:
        return None
    low, high = total * (1 - share) / 2, total * (1 + share) / 2
    seen, start, end = 0.0, None, None
    for key, n in sorted(bins):
        seen += n
        if start is None and seen >= low:
            start = key * bin_seconds
        if seen >= high:
            end = (key + 1) * bin_seconds
            break
    if start is None or end is None or end <= start:
        return None
    return round(share * total / (end - start), 1)


async def _dead_lettered(bench: Bench) -> float:
    return await bench.dead_lettered() if bench.dead_lettered is not None else 0.0


async def _delivered(bench: Bench, phase: str, expected: int, timeout: float,
                     dead_before: float) -> bool:
    """Wait until the ``expected`` deliveries are delivered or dead-lettered (a schedule
    shorter than the pile-up runs the first ones out of attempts: waiting for them would last
    the whole timeout); whether every one was delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        got = await bench.sink.count(phase, "down")
        if got >= expected:
            return True
        if got + await _dead_lettered(bench) - dead_before >= expected:
            return False
        await asyncio.sleep(1.0)
    return False


async def _all_failed(bench: Bench, phase: str, expected: int, timeout: float) -> float:
    """Wait until each of the ``expected`` deliveries has failed at least once (the sink's
    count of events refused at least once reaches it: its count of refusals would count the
    early ones' retries too, and the endpoint would recover with part of the backlog not yet
    attempted); seconds it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < timeout:
        if (await bench.sink.attempts(phase))["failed_events"] >= expected:
            break
        await asyncio.sleep(1.0)
    return round(loop.time() - began, 1)


async def scenario(bench: Bench, down: Target, fan: Target, sustained: float,
                   watch: BrokerWatch, delays_s: tuple[float, ...], jitter: float
                   ) -> dict[str, Any]:
    """The whole phase (``down`` publishes to :data:`DOWN` alone; ``fan`` to the fast ones)."""
    opts = bench.opts
    n = opts.backlog
    rate = opts.backlog_fraction * sustained
    others = opts.backlog_others_fraction * sustained
    publish_s = max(1.0, n / rate)
    phase = f"backlog{uuid.uuid4().hex[:6]}"
    await bench.sink.down([DOWN])
    baseline = await bench.phase(fan, "paced", rate=others, duration=opts.slow_duration,
                                 label="backlog: others' baseline")
    began = time.time()
    dead_before = await _dead_lettered(bench)
    start = await watch.start()

    async def accumulate() -> dict[str, Any]:
        stats = await paced(down.send, phase, n / publish_s, publish_s)
        return stats.as_json()

    during = await bench.phase(fan, "paced", rate=others, duration=publish_s,
                               during=accumulate,
                               label=f"backlog: others while {n} pile up")
    failed_in = await _all_failed(bench, phase, n, opts.backlog_timeout)
    full = await watch.sample()
    depths = await bench.queues.depths()
    tiers = {q: d for q, d in depths.items() if q.startswith("dihya.retry.")}
    recovered_at = time.time()
    await bench.sink.down([])
    drained = await _delivered(bench, phase, n, opts.backlog_timeout, dead_before)
    dead = round(await _dead_lettered(bench) - dead_before)
    await watch.stop()
    sink = await bench.sink.stats(phase)
    attempts = await bench.sink.attempts(phase)
    first, last = sink["first"], sink["last"]
    got = sum(sink["by_endpoint"].values())
    drain_dps = busy_rate(sink["bins"].get("down", []), sink["bin_seconds"])
    base_p99 = (baseline["latency_ms"] or {}).get("p99")
    during_p99 = (during["latency_ms"] or {}).get("p99")
    ratio = round(during_p99 / base_p99, 2) if base_p99 and during_p99 else None
    broker = watch.window(began)
    grown = (full.mem_used - start.mem_used) if full and start else None
    index = (full.breakdown.get("quorum_queue_procs", 0)
             - start.breakdown.get("quorum_queue_procs", 0)) if full and start else None
    return {
        "backlog": n,
        "sustained_dps": round(sustained, 1),
        "published_dps": round(n / publish_s, 1),
        "others_offered_dps": round(others, 1),
        "retry_schedule_s": list(delays_s),
        "retry_jitter": jitter,
        # the first delivery's last attempt comes no sooner than this after its first
        "attempts_outlast_pile_up": sum(delays_s) * (1 - jitter)
        > recovered_at - during["load_started_at"],
        "published": (during.get("side") or {}).get("confirmed"),
        "all_failed_once_after_s": failed_in,
        "failed_attempts": attempts["failed"],
        "failed_events": attempts["failed_events"],
        "retry_tier_depths_at_full_backlog": tiers,
        "in_retry_tiers_at_full_backlog": sum(tiers.values()),
        "others_p99_ms_baseline": base_p99,
        "others_p99_ms_during": during_p99,
        "others_p99_ratio": ratio,
        "others_p99_held": ratio is not None and ratio <= OTHERS_P99_FACTOR,
        "others_delivered_during": during["delivered"],
        "others_expected_during": during["expected"],
        "broker": broker,
        "memory_alarm": bool(broker.get("alarms")),
        "broker_growth_mib": round(grown / MIB, 1) if grown is not None else None,
        "broker_bytes_per_queued_delivery": round(grown / n) if grown is not None and n
        else None,
        # the queues' own processes (their message index): what stays while the backlog does
        "broker_index_bytes_per_queued_delivery": round(index / n) if index is not None and n
        else None,
        "drained": drained,
        # run out of attempts before the recovery (see attempts_outlast_pile_up)
        "dead_lettered": dead,
        "delivered_after_recovery": got,
        "duplicates": sink["duplicates"],
        "drain_s": round(last - recovered_at, 1) if last else None,
        "first_delivery_s_after_recovery": round(first - recovered_at, 1) if first else None,
        "drain_dps": drain_dps,
        # the whole backlog over the time from the recovery to its last delivery
        "drain_dps_from_recovery": round(got / (last - recovered_at), 1)
        if last and last > recovered_at else None,
        "drain_held": drain_dps is not None and drain_dps >= DRAIN_SHARE * sustained,
        "catch_up": opts.catch_up,
        "schedule": schedule_check(attempts["sampled"], delays_s, jitter,
                                   recovered_at if opts.catch_up else None),
        "phases": [baseline["phase"], during["phase"], phase],
    }
