"""Turn a run's phases into the headline figures, the issue's targets, a plot and a table."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import orjson

from launcher.processes import SERVICES

RATIO_TARGET = 0.8
"""Issue #23: Dihya's sustained rate over AMQP against the raw chain's, SQLite stores."""
RATIO_TARGET_POSTGRES = 0.7
"""The same with PostgreSQL stores (``--store postgres``), the production configuration."""
P99_TARGET_MS = 50.0
"""p99 ingest → receipt at ½ S, events published over AMQP."""
P99_HTTP_TARGET_MS = 100.0
"""The same, events published with ``POST /v1/events``."""
AUDIT_LAG_TARGET_S = 10.0
SLOW_DROP_TARGET_PCT = 10.0
HOT_TARGET = 0.95
"""The realistic-receivers phase: share of the hot endpoint's offered rate it receives."""
RSS_TARGET_MIB = 200.0
DIHYA_GROUPS = (*SERVICES, "rabbitmq", "postgres")
"""The processes whose CPU is Dihya's cost per delivery: its services, the broker, and
PostgreSQL's server in a ``--store postgres`` run (no such group with SQLite)."""
RAW_GROUPS = ("raw-relay", "raw-poster", "rabbitmq")
"""The raw chain's: its relay, its poster and the broker."""
GROWTH_SHARE = 0.02
"""A queue "grows without bound" if, once the pipeline has filled (the second half of a paced
phase), its depth still rises faster than this share of the offered rate."""


def _phases(results: dict[str, Any], target: str, mode: str | None = None
            ) -> list[dict[str, Any]]:
    return [p for p in results["phases"] if p["target"] == target
            and (mode is None or p["mode"] == mode)]


def _closest(phases: list[dict[str, Any]], fraction: float) -> dict[str, Any] | None:
    paced = [p for p in phases if p["mode"] == "paced"]
    if not paced:
        return None
    with_fraction = [p for p in paced if p.get("fraction_of_saturation") is not None]
    if not with_fraction:
        return paced[0]
    return min(with_fraction, key=lambda p: abs(p["fraction_of_saturation"] - fraction))


def half_saturation(results: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The target's paced phase closest to ½ its saturation (the moderate-load figures)."""
    return _closest(_phases(results, target), 0.5)


def keeps_up(phase: dict[str, Any]) -> bool:
    """A paced phase the system kept up with: ≥ 95 % of the offered rate came out while load
    was on, and the rest within 2 s of the last publish."""
    offered = phase.get("offered_dps") or 0
    return bool(offered) and phase["throughput_dps"] >= 0.95 * offered and \
        phase["delivered"] >= phase["expected"] and phase["drain_s"] <= 2.0


def queue_trends(phase: dict[str, Any]) -> dict[str, float]:
    """Each queue's trend (messages/s) once the pipeline has filled: the second half of the
    phase's load (results without it, from before it was measured: the whole load)."""
    return {q: v.get("settled_slope_per_s", v["slope_per_s"])
            for q, v in phase["queues"].items()}


def growing_queues(phase: dict[str, Any]) -> list[str]:
    """The queues still growing once the pipeline had filled (see :data:`GROWTH_SHARE`).

    A queue that grew so over the load's second half holds at least that growth when load
    stops; one that did not (a standing queue's swing from a few hundred back to zero reads
    as a steep slope over eight seconds) is not growing without bound."""
    limit = GROWTH_SHARE * (phase.get("offered_dps") or phase["throughput_dps"])
    least = limit * phase["duration_s"] / 2
    return [q for q, slope in queue_trends(phase).items() if slope > limit
            and phase["queues"][q].get("at_load_end", least) >= least]


def sustains(phase: dict[str, Any]) -> bool:
    """A paced phase whose rate the system sustained: it kept up, and no queue — the audit's
    and the first defer tier's included — grew once the pipeline had filled. A rate reached only
    by letting a backlog build is not sustained: that backlog is the growing queue."""
    return keeps_up(phase) and not growing_queues(phase)


def sustained_phase(results: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The target's paced phase at the highest offered rate it sustained, if any."""
    held = [p for p in _phases(results, target, "paced") if sustains(p)]
    return max(held, key=lambda p: p["offered_dps"], default=None)


def saturation_pairs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each saturation of the raw chain with Dihya's (over AMQP) of the same pair: the sweeps'
    first, then the repeats (``pair`` 1, 2, …); the profiled run is not reported, so not here."""
    def by_pair(target: str) -> dict[int, float]:
        found: dict[int, float] = {}
        for p in _phases(results, target, "admitted"):
            found.setdefault(p.get("pair", 0), p["throughput_dps"])
        return found

    raw, dihya = by_pair("raw"), by_pair("dihya-amqp")
    return [{"pair": n, "raw_dps": raw[n], "dihya_dps": dihya[n],
             "ratio": round(dihya[n] / raw[n], 3) if raw[n] else None}
            for n in sorted(raw.keys() & dihya.keys())]


def summary(results: dict[str, Any], s_raw: float, s_dihya: float, s_http: float | None
            ) -> dict[str, Any]:
    dihya = _phases(results, "dihya-amqp")
    saturation = next((p for p in dihya if p["mode"] == "admitted"), None)
    half = _closest(dihya, 0.5)
    full = _closest(dihya, 1.0)
    cpu = saturation["cpu_pct"] if saturation else {}
    per_delivery = _per_delivery(saturation)
    raw_sat = next((p for p in _phases(results, "raw", "admitted")), None)
    raw_cpu = raw_sat["cpu_pct"] if raw_sat else {}
    raw_per_delivery = _per_delivery(raw_sat)
    half_cpu = _per_delivery(half)
    raw_half_cpu = _per_delivery(_closest(_phases(results, "raw"), 0.5))
    # CPU per delivery summed over the processes doing the work (the broker included): on a
    # machine shared with other work this ratio moves less than the throughput ratio does.
    dihya_cost = sum(per_delivery.get(g, 0.0) for g in DIHYA_GROUPS)
    raw_cost = sum(raw_per_delivery.get(g, 0.0) for g in RAW_GROUPS)
    # Audit lag is judged on the paced phases: after an admission-controlled run the pipeline
    # still holds a whole window of deliveries when load stops (window / rate seconds of work),
    # which says more about the window than about the audit service.
    dihya_phases = [p for p in results["phases"]
                    if p.get("audit") and p["target"] in ("dihya-amqp", "dihya-http")]
    audit = [p["audit"] for p in dihya_phases if p["mode"] == "paced"]
    worst_lag = max((a.get("after_load_stopped_s") or 0.0 for a in audit), default=None)
    audit_complete = all(p["audit"].get("complete") for p in dihya_phases) if audit else False
    behind_receipts = max((p["audit"].get("after_last_receipt_s") or 0.0 for p in dihya_phases),
                          default=None)
    sustained = {t: sustained_phase(results, t) for t in ("raw", "dihya-amqp", "dihya-http")}
    sustained_dps = {t: p["offered_dps"] if p else None for t, p in sustained.items()}
    ratio_sustained = (round(sustained_dps["dihya-amqp"] / sustained_dps["raw"], 3)
                       if sustained_dps["dihya-amqp"] and sustained_dps["raw"] else None)
    at_sustained = sustained["dihya-amqp"]
    rss = {s: results["peak_rss_process_mib"].get(s) for s in SERVICES}
    slow = results.get("slow_endpoint") or {}
    receivers = results.get("realistic_receivers") or {}
    hot = receivers.get("hot_delivered_over_offered")
    pairs = saturation_pairs(results)
    ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
    ratio_median = round(statistics.median(ratios), 3) if ratios else None
    out: dict[str, Any] = {
        "sustained_dps": sustained_dps,
        "ratio_sustained_amqp": ratio_sustained,
        "raw_saturation_dps": round(s_raw, 1),
        "dihya_amqp_saturation_dps": round(s_dihya, 1),
        "dihya_http_saturation_dps": round(s_http, 1) if s_http is not None else None,
        "ratio_saturation_amqp": round(s_dihya / s_raw, 3) if s_raw else None,
        "ratio_saturation_http": round(s_http / s_raw, 3) if s_raw and s_http is not None
        else None,
        "saturation_pairs": pairs,
        "ratio_saturation_median": ratio_median,
        "latency_ms_at_half_saturation": half["latency_ms"] if half else None,
        "half_saturation_offered_dps": half["offered_dps"] if half else None,
        "latency_ms_at_saturation": saturation["latency_ms"] if saturation else None,
        "cpu_pct_at_saturation": cpu,
        "cpu_ms_per_delivery": per_delivery,
        "raw_cpu_pct_at_saturation": raw_cpu,
        "raw_cpu_ms_per_delivery": raw_per_delivery,
        "cpu_ms_per_delivery_total": {"dihya": round(dihya_cost, 2), "raw": round(raw_cost, 2)},
        # moderate-load efficiency: the same at ½ S, where batches are small
        "cpu_ms_per_delivery_at_half_saturation": half_cpu,
        "raw_cpu_ms_per_delivery_at_half_saturation": raw_half_cpu,
        "cpu_ms_per_delivery_total_at_half_saturation": {
            "dihya": round(sum(half_cpu.get(g, 0.0) for g in DIHYA_GROUPS), 2),
            "raw": round(sum(raw_half_cpu.get(g, 0.0)
                             for g in RAW_GROUPS), 2)},
        "cpu_cost_ratio": round(raw_cost / dihya_cost, 3) if dihya_cost else None,
        "peak_rss_mib_per_process": rss,
        "audit_lag_s_after_load_stopped_worst_paced": worst_lag,
        "audit_lag_s_after_last_receipt_worst": behind_receipts,
        "audit_lag_at_saturation": saturation.get("audit") if saturation else None,
        "audit_complete": audit_complete,
        "queue_trend_at_sustained_rate_per_s": queue_trends(at_sustained)
        if at_sustained else {},
        # at 1 x saturation (the admission-controlled peak) paced open-loop: for comparison
        "queue_trend_at_saturation_rate_per_s": queue_trends(full) if full else {},
        "queues_growing_at_saturation_rate": growing_queues(full) if full else [],
        "queue_depth_at_load_end_at_saturation_rate": {
            q: v.get("at_load_end") for q, v in full["queues"].items()} if full else {},
        "slow_endpoint_drop_pct": slow.get("fast_throughput_drop_pct"),
        "realistic_hot_delivered_over_offered": hot,
    }
    half_p99: float | None = ((half or {}).get("latency_ms") or {}).get("p99")
    http_half = _closest(_phases(results, "dihya-http"), 0.5)
    http_half_p99: float | None = ((http_half or {}).get("latency_ms") or {}).get("p99")
    ratio_target = (RATIO_TARGET_POSTGRES if results.get("conditions", {}).get("store")
                    == "postgres" else RATIO_TARGET)
    drop = slow.get("fast_throughput_drop_pct")
    biggest = max((v for v in rss.values() if v is not None), default=None)
    out["targets"] = [
        _target("Dihya ÷ raw sustained deliveries/s (AMQP; highest paced rate with no queue "
                "growing)", f"≥ {ratio_target}", ratio_sustained,
                ratio_sustained is not None and ratio_sustained >= ratio_target),
        _target("p99 ingest→receipt at ½ saturation, ms (AMQP)", f"≤ {P99_TARGET_MS:g}",
                half_p99, half_p99 is not None and half_p99 <= P99_TARGET_MS),
        *([_target("p99 ingest→receipt at ½ saturation, ms (HTTP)",
                   f"≤ {P99_HTTP_TARGET_MS:g}", http_half_p99,
                   http_half_p99 is not None and http_half_p99 <= P99_HTTP_TARGET_MS)]
          if http_half is not None else []),
        _target("audit lag after load stops, s (worst paced phase)",
                f"≤ {AUDIT_LAG_TARGET_S:g}",
                worst_lag, worst_lag is not None and audit_complete
                and worst_lag <= AUDIT_LAG_TARGET_S),
        # The sustained rate is by definition one at which no queue grew: this target is met
        # when Dihya sustained some paced rate at all; the growth at 1 x saturation (the
        # admission-controlled peak, offered open-loop) is reported beside it.
        _target("queues growing at the sustained rate (trend of the second half)", "none",
                growing_queues(at_sustained) if at_sustained else "no rate sustained",
                at_sustained is not None),
        _target(f"fast-endpoint throughput drop with a {slow.get('slow_delay_s', 2):g} s "
                "endpoint, %",
                f"< {SLOW_DROP_TARGET_PCT:g}", drop,
                drop is not None and drop < SLOW_DROP_TARGET_PCT),
        _target("realistic receivers: hot endpoint (200 ms) delivered ÷ offered",
                f"≥ {HOT_TARGET:g}", hot, hot is not None and hot >= HOT_TARGET),
        _target("peak RSS of a service process, MiB", f"< {RSS_TARGET_MIB:g}", biggest,
                biggest is not None and biggest < RSS_TARGET_MIB),
        *overload_targets(results.get("overload")),
        *backlog_targets(results.get("backlog")),
    ]
    return out


def _per_delivery(phase: dict[str, Any] | None) -> dict[str, float]:
    """CPU ms per delivery of each process group over a phase's steady window."""
    if not phase or not phase["throughput_dps"]:
        return {}
    return {g: round(pct * 10 / phase["throughput_dps"], 3)
            for g, pct in phase["cpu_pct"].items()}


def overload_targets(overload: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The overload phases' verdicts for Dihya (the raw chain's are in ``overload``)."""
    runs = ((overload or {}).get("runs") or {}).get("dihya-amqp")
    if not runs:
        return []
    factors = "/".join(f"{r['factor']:g}" for r in runs)
    return [
        _target(f"overload {factors} x S: delivered ÷ S, lowest {runs[0]['window_s']} s window "
                "while loaded", "≥ 0.9",
                [round((r["delivered_min_window_dps"] or 0) / r["sustained_dps"], 3)
                 for r in runs], all(r["held"] for r in runs)),
        _target("overload: processes crashed, memory alarms", "none",
                [[r["crashed"], r["broker"].get("alarms")] for r in runs],
                all(not r["crashed"] and not r["memory_alarm"] for r in runs)),
        _target("overload: backlog drain rate ÷ S", "≥ 1",
                [round(r["drain_dps"] / r["sustained_dps"], 3) if r["drain_dps"] else None
                 for r in runs], all(r["drained_at_or_above_s"] for r in runs)),
        _target("overload: fresh events' p99 back under 2 x its ½ S value, s after the drain",
                "≤ 30", [r["p99_recovered_s_after_drain"] for r in runs],
                all(r["recovered"] for r in runs)),
    ]


def backlog_targets(backlog: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The backlog phase's verdicts."""
    if not backlog:
        return []
    n = backlog["backlog"]
    return [
        _target(f"backlog of {n}: other endpoints' p99 ÷ their baseline", "≤ 2",
                backlog["others_p99_ratio"], backlog["others_p99_held"]),
        _target(f"backlog of {n}: RabbitMQ memory peak ÷ its limit (alarms)", "no alarm",
                [backlog["broker"].get("peak_share_of_limit"), backlog["broker"].get("alarms")],
                not backlog["memory_alarm"] and backlog["broker"].get("samples", 0) > 0),
        _target(f"backlog of {n}: drain rate ÷ S", "≥ 0.9",
                round(backlog["drain_dps"] / backlog["sustained_dps"], 3)
                if backlog["drain_dps"] else None, backlog["drain_held"]),
        _target(f"backlog of {n}: retry schedule respected (attempts early)", "0",
                backlog["schedule"]["early"],
                backlog["schedule"]["respected"] and backlog["drained"]),
    ]


def _target(name: str, goal: str, measured: Any, met: bool) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": bool(met)}


def plot(results: dict[str, Any], path: Path) -> str | None:
    """latency_vs_load.png: p50/p99 against offered load, and throughput against offered."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (it is in the bench extra: bin/bench)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    colours = {"raw": "tab:gray", "dihya-amqp": "tab:blue", "dihya-http": "tab:orange"}
    for target, colour in colours.items():
        paced = sorted((p for p in _phases(results, target, "paced") if p["latency_ms"]),
                       key=lambda p: p["offered_dps"])
        if not paced:
            continue
        x = [p["offered_dps"] for p in paced]
        left.plot(x, [p["latency_ms"]["p99"] for p in paced], "o-", color=colour,
                  label=f"{target} p99")
        left.plot(x, [p["latency_ms"]["p50"] for p in paced], "s--", color=colour,
                  alpha=0.7, label=f"{target} p50")
        right.plot(x, [p["throughput_dps"] for p in paced], "o-", color=colour, label=target)
        for sat in _phases(results, target, "admitted"):
            for axis in (left, right):
                axis.axvline(sat["throughput_dps"], color=colour, linestyle=":", alpha=0.6)
        held = sustained_phase(results, target)
        if held is not None:
            right.axvline(held["offered_dps"], color=colour, linestyle="--", alpha=0.8,
                          label=f"{target} sustained")
    left.axhline(P99_TARGET_MS, color="tab:red", linestyle="-.", alpha=0.5,
                 label=f"p99 target, AMQP ({P99_TARGET_MS:g} ms)")
    left.set_yscale("log")
    left.set_xlabel("offered load, deliveries/s")
    left.set_ylabel("ingest → receipt latency, ms (log)")
    left.set_title("Latency against offered load (dotted: saturation)")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)
    top = max((max(p["offered_dps"] or 0, p["throughput_dps"]) for p in results["phases"]
               if p["target"] in colours), default=1) * 1.05
    right.plot([0, top], [0, top], color="black", alpha=0.3, label="delivered = offered")
    right.set_xlabel("offered load, deliveries/s")
    right.set_ylabel("delivered with valid signatures, deliveries/s")
    right.set_title("Throughput against offered load (dashed: sustained)")
    right.legend(fontsize=8)
    right.grid(True, alpha=0.3)
    conditions = results["conditions"]
    others = [p["other_cpu_pct"] for p in results["phases"] if p.get("other_cpu_pct") is not None]
    busy = f", other work on the machine: {sum(others) / len(others):.0f} % of a core on average" \
        if others else ""
    fig.suptitle(f"Dihya benchmark — {conditions['machine']['cores']} cores, "
                 f"{conditions['machine']['cpu']}, load avg at start "
                 f"{results['loadavg']['start'][0]}{busy}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def table(results: dict[str, Any]) -> str:
    """The console summary."""
    s = results["summary"]
    lines = ["", "Phase                               offered   thru/s   p50 ms   p99 ms  "
             "audit lag s"]
    for p in results["phases"]:
        lat = p["latency_ms"] or {}
        lag = (p.get("audit") or {}).get("after_load_stopped_s")
        lines.append(f"{p['label']:<34} {_n(p['offered_dps']):>8} {_n(p['throughput_dps']):>8}"
                     f" {_n(lat.get('p50')):>8} {_n(lat.get('p99')):>8} {_n(lag):>11}")
    pairs = s.get("saturation_pairs") or []
    pair_lines = [
        "Saturation pairs (raw /s, Dihya /s, ratio): "
        + "; ".join(f"{p['raw_dps']:.0f}, {p['dihya_dps']:.0f}, {p['ratio']}" for p in pairs)
        + f"   median ratio {s.get('ratio_saturation_median', s.get('ratio_amqp_median'))}"
    ] if len(pairs) > 1 else []
    held = s.get("sustained_dps") or {}
    sustained_line = [
        f"Sustained (highest paced rate, no queue growing): raw {held.get('raw')}/s   "
        f"Dihya (AMQP) {held.get('dihya-amqp')}/s   ratio {s.get('ratio_sustained_amqp')}   "
        f"Dihya (HTTP) {held.get('dihya-http')}/s"
    ] if held else []
    lines += [
        "",
        # results from before the sustained rate was searched named the saturation "sustained"
        "Saturation (admission-controlled): raw "
        f"{_get(s, 'raw_saturation_dps', 'raw_sustained_dps')}/s"
        f"   Dihya (AMQP) {_get(s, 'dihya_amqp_saturation_dps', 'dihya_amqp_sustained_dps')}/s"
        f"   ratio {_get(s, 'ratio_saturation_amqp', 'ratio_amqp')}   Dihya (HTTP) "
        f"{_get(s, 'dihya_http_saturation_dps', 'dihya_http_sustained_dps')}/s",
        *pair_lines,
        *sustained_line,
        "CPU at Dihya saturation (% of a core): " + ", ".join(
            f"{g} {v}" for g, v in s["cpu_pct_at_saturation"].items()),
        "CPU ms per delivery, at S | at ½ S: " + ", ".join(
            f"{g} {v} | {s.get('cpu_ms_per_delivery_at_half_saturation', {}).get(g, '-')}"
            for g, v in s["cpu_ms_per_delivery"].items()),
        *overload_lines(results.get("overload")),
        *backlog_lines(results.get("backlog")),
        "Peak RSS per process (MiB): " + ", ".join(
            f"{g} {v}" for g, v in s["peak_rss_mib_per_process"].items()),
        "",
        "Targets:",
    ]
    for t in s["targets"]:
        lines.append(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}: "
                     f"{t['measured']} (goal {t['goal']})")
    return "\n".join(lines)


def overload_lines(overload: dict[str, Any] | None) -> list[str]:
    """One line per overload phase, Dihya and the raw chain side by side."""
    lines = []
    for name, runs in ((overload or {}).get("runs") or {}).items():
        for r in runs:
            lines.append(
                f"Overload {name} {r['factor']:g} x S ({r['offered_dps']:.0f}/s offered, S "
                f"{r['sustained_dps']:.0f}): lowest {r['window_s']} s window "
                f"{r['delivered_min_window_dps']}/s, mean {r['delivered_mean_dps_while_loaded']}"
                f"/s; drain {r['drain_dps']}/s in {r['drain_s']} s; p99 back "
                f"{r['p99_recovered_s_after_drain']} s after; crashed {r['crashed'] or 'none'}; "
                f"broker peak {r['broker'].get('mem_used_peak_mib')} MiB "
                f"alarms {r['broker'].get('alarms')}")
    return lines


def backlog_lines(backlog: dict[str, Any] | None) -> list[str]:
    """The backlog phase in two lines."""
    if not backlog:
        return []
    b = backlog
    short = ("" if b.get("attempts_outlast_pile_up", True)
             else " (schedule shorter than the pile-up)")
    return [
        f"Backlog {b['backlog']} ({b['published_dps']}/s, schedule {b['retry_schedule_s']} s): "
        f"{b['in_retry_tiers_at_full_backlog']} in retry tiers; broker +"
        f"{b['broker_growth_mib']} MiB (index {b.get('broker_index_bytes_per_queued_delivery')} "
        "B each), peak "
        f"{b['broker'].get('mem_used_peak_mib')} of {b['broker'].get('mem_limit_mib')} MiB, "
        f"alarms {b['broker'].get('alarms')}; others' p99 {b['others_p99_ms_baseline']} → "
        f"{b['others_p99_ms_during']} ms",
        f"  drain{' (catch-up)' if b.get('catch_up') else ''} "
        f"{b['delivered_after_recovery']}/{b['backlog']} at {b['drain_dps']}/s in "
        f"{b['drain_s']} s ({b.get('drain_dps_from_recovery')}/s from the recovery), "
        f"duplicates {b['duplicates']}, dead-lettered {b.get('dead_lettered')}{short}; "
        f"schedule: {b['schedule']}",
    ]


def _get(summary: dict[str, Any], key: str, before: str) -> Any:
    return summary.get(key, summary.get(before))


def _n(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def finish(results: dict[str, Any], *, s_raw: float, s_dihya: float, s_http: float | None
           ) -> dict[str, Any]:
    out = Path(results["settings"]["out"])
    results["summary"] = summary(results, s_raw, s_dihya, s_http)
    skipped = plot(results, out / "latency_vs_load.png")
    results["plot"] = skipped or "latency_vs_load.png"
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(table(results), flush=True)
    print(f"\nWrote {out / 'results.json'} and {results['plot']}", flush=True)
    return results


def main() -> None:
    """``python -m bench.report results.json``: redraw the plot and reprint the table."""
    import sys

    path = Path(sys.argv[1])
    results = orjson.loads(path.read_bytes())
    plot(results, path.parent / "latency_vs_load.png")
    print(table(results))


if __name__ == "__main__":
    main()
