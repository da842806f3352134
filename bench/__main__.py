"""``python -m bench`` (or ``bin/bench``): run the benchmark and write its results.

Presets: the default full run (about 7 minutes on 2 cores before the overload phases, which
add about 15, and the million-delivery backlog phase, which takes hours: ``--backlog 0`` skips
it), ``--quick`` (a few minutes: fewer and shorter phases, no profile, a 5,000-delivery
backlog) and ``--smoke`` (a few hundred events at one fixed rate: checks that the harness
works, not the speed). Every option below overrides the preset.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from bench.run import Options, run
from launcher.processes import SERVICES

PRESETS: dict[str, dict[str, object]] = {
    "full": {},
    "quick": {
        "admitted_duration": 5.0, "duration": 4.0, "sustained_duration": 10.0,
        "search_steps": 2, "fractions": (0.5, 1.0),
        "raw_fractions": (0.5, 1.0), "http_fractions": (0.5,), "profile": False,
        "repeats": 0, "slow_duration": 6.0, "warmup_events": 100, "drain_timeout": 15.0,
        "realistic_duration": 10.0,
        "audit_timeout": 15.0, "settle_timeout": 10.0,
        "overload_duration": 15.0, "overload_drain_timeout": 120.0, "recovery_window": 10.0,
        "overload_raw": False, "backlog": 5000, "retry_schedule": "5s,2m",
        "backlog_timeout": 300.0,
    },
    "smoke": {
        "admitted_duration": 1.5, "duration": 1.5, "search_steps": 0, "window": 100,
        "fractions": (0.5,), "raw_fractions": (0.5,), "http_fractions": (0.5,),
        "fixed_rate": 40.0, "repeats": 1, "profile": False, "slow_duration": 1.5,
        "slow_delay": 0.5, "warmup_events": 0, "realistic_duration": 2.0, "hot_rate": 40.0,
        "real_rate": 20.0,
        "drain_timeout": 15.0, "audit_timeout": 15.0, "settle_timeout": 5.0,
        "overload_factors": (1.5,), "overload_duration": 2.0, "overload_drain_timeout": 15.0,
        "recovery_window": 1.0, "overload_raw": False, "backlog": 30,
        "backlog_others_fraction": 0.5, "retry_schedule": "1s,15s", "backlog_timeout": 30.0,
        "broker_interval": 60.0,
    },
}


def _replicas(text: str) -> dict[str, int]:
    """``deliverer=2,signer=2`` (or one number for every service)."""
    if text.isdigit():
        return dict.fromkeys(SERVICES, int(text))
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        name, _, count = part.partition("=")
        if name not in SERVICES or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"not service=count: {part!r}")
        out[name] = int(count)
    return out


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0]
                                     if __doc__ else None)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_const", dest="preset", const="quick",
                        help="a shorter run (about two minutes)")
    preset.add_argument("--smoke", action="store_const", dest="preset", const="smoke",
                        help="a tiny run that checks the harness works")
    parser.add_argument("--out", type=Path, help="output folder (default bench/out/<time>/)")
    parser.add_argument("--amqp-url", default=os.environ.get(
        "DIHYA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="RabbitMQ (default: $DIHYA_AMQP_URL or the local guest account)")
    parser.add_argument("--no-vhost", dest="own_vhost", action="store_false",
                        help="use the URL's vhost as is instead of a throw-away one")
    parser.add_argument("--replicas", type=_replicas, default={},
                        help="processes per service: 'deliverer=2,signer=2' or '2' (all)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="storage of ingest, signer and audit (postgres: fresh databases "
                             "on --pg-url; needed for several ingest or signer processes)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "DIHYA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--event-bytes", type=int, help="size of a published event (1024)")
    parser.add_argument("--window", type=int,
                        help="admission control: deliveries outstanding at most (1000)")
    parser.add_argument("--duration", type=float, help="seconds per paced phase (8)")
    parser.add_argument("--search-steps", type=int, metavar="N",
                        help="bisection steps for the sustained rate (2; 0: the sweep's best)")
    parser.add_argument("--sustained-duration", type=float,
                        help="seconds of each phase of that search (16)")
    parser.add_argument("--admitted-duration", type=float,
                        help="seconds of each saturation run (12)")
    parser.add_argument("--fractions", type=_fractions,
                        help="paced rates for Dihya over AMQP, as fractions of its saturation")
    parser.add_argument("--raw-fractions", type=_fractions, help="idem for the raw chain")
    parser.add_argument("--http-fractions", type=_fractions, help="idem for Dihya over HTTP")
    parser.add_argument("--rate", type=float, dest="fixed_rate", metavar="DPS",
                        help="paced phases at DPS deliveries/s instead of fractions of "
                        "saturation: to compare two commits at the same load")
    parser.add_argument("--no-http", dest="http", action="store_false", default=None)
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="saturation pairs (raw chain, Dihya over AMQP) run N more times "
                        "after the sweeps, in alternating order; the ratio is the median of "
                        "the pairs (full run 2, --quick 0)")
    parser.add_argument("--profile", dest="profile", action="store_true", default=None,
                        help="profile every service with py-spy at saturation")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-at", type=float, metavar="FRACTION",
                        help="profile a paced run at FRACTION of saturation instead (e.g. 0.5: "
                        "where batches are small)")
    parser.add_argument("--no-slow", dest="slow", action="store_false", default=None,
                        help="skip the slow-endpoint scenario")
    parser.add_argument("--slow-delay", type=float, help="seconds the slow endpoint takes (2)")
    parser.add_argument("--slow-duration", type=float,
                        help="seconds of each of the two slow-endpoint phases (25)")
    parser.add_argument("--no-realistic", dest="realistic", action="store_false", default=None,
                        help="skip the realistic-receivers phase")
    parser.add_argument("--hot-rate", type=float,
                        help="events/s to the realistic phase's hot endpoint (200)")
    parser.add_argument("--no-overload", dest="overload", action="store_false", default=None,
                        help="skip the overload phases")
    parser.add_argument("--overload-factors", type=_fractions,
                        help="overload phases at these multiples of the sustained rate (1.5,3)")
    parser.add_argument("--overload-duration", type=float,
                        help="seconds of load of each overload phase (60)")
    parser.add_argument("--overload-raw", action=argparse.BooleanOptionalAction, default=None,
                        help="the raw chain through the same overload phases (full run: yes)")
    parser.add_argument("--backlog", type=int, metavar="N",
                        help="deliveries piled up for a failing endpoint (full run 1,000,000; "
                        "0: no backlog phase). Run large ones on a node of your own "
                        "(--amqp-url, --rabbitmqctl): a memory alarm stops every publisher")
    parser.add_argument("--backlog-fraction", type=float,
                        help="rate of the backlog's events, share of the sustained rate (0.3)")
    parser.add_argument("--backlog-timeout", type=float,
                        help="longest wait, s, for the backlog to fail once and to drain")
    parser.add_argument("--retry-schedule",
                        help="DIHYA_DELIVERER_RETRY_SCHEDULE for the run (the deliverer's "
                        "default in a full run)")
    parser.add_argument("--catch-up", action="store_true", default=None,
                        help="run Dihya with DIHYA_DELIVERER_CATCH_UP=true: the backlog phase "
                        "drains from the recovery on (catch-up attempts are early by design "
                        "and counted apart in its schedule check)")
    parser.add_argument("--rabbitmqctl",
                        help="command reaching the node for its memory and alarms "
                        "(default: rabbitmqctl)")
    parser.add_argument("--verify-every", type=int,
                        help="the sink verifies every n-th delivery (1: all)")
    parser.add_argument("--keep-logs", action="store_true", default=None,
                        help="copy every process's log to <out>/logs/")
    parser.add_argument("--plain-path", dest="fast_path", action="store_false", default=None,
                        help="run Dihya with DIHYA_AMQP_FAST_PATH=false (aio-pika's public API "
                        "alone): the fast path's gain is the difference")
    parser.add_argument("--set", dest="service_env", action="append", metavar="NAME=VALUE",
                        help="a DIHYA_* setting for every service of the run (repeat for more): "
                        "to compare a setting against its default, e.g. "
                        "--set DIHYA_DELIVERER_MAX_PER_HOST=200 (recorded in results.json: "
                        "no secrets)")
    args = parser.parse_args(argv)
    name = args.preset or "full"
    values: dict[str, object] = {**PRESETS[name], "preset": name}
    for key in ("event_bytes", "window", "duration", "search_steps", "sustained_duration",
                "admitted_duration", "fractions", "raw_fractions", "http_fractions", "http",
                "repeats", "profile", "profile_at", "slow", "slow_delay", "slow_duration",
                "verify_every", "keep_logs", "fixed_rate", "fast_path", "realistic",
                "hot_rate", "overload", "overload_factors", "overload_duration",
                "overload_raw", "backlog", "backlog_fraction", "backlog_timeout",
                "retry_schedule", "catch_up", "rabbitmqctl"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    if args.service_env:
        pairs = [item.partition("=") for item in args.service_env]
        if any(not n.startswith("DIHYA_") or not sep for n, sep, _ in pairs):
            parser.error("--set takes DIHYA_NAME=VALUE")
        values["service_env"] = {n: v for n, _, v in pairs}
    out = args.out or Path(__file__).resolve().parent / "out" / time.strftime("%Y%m%d-%H%M%S")
    return Options(out=out, amqp_url=args.amqp_url, own_vhost=args.own_vhost,
                   replicas=args.replicas, store=args.store, pg_url=args.pg_url,
                   **values)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(run(opts))
    else:
        uvloop.run(run(opts))
    sys.exit(0)


if __name__ == "__main__":
    main()
