"""Audit behind a deep queue: the CPU, time and memory it takes to store a backlog of fact
batches, the broker alone feeding it (no other service).

``python -m bench.audit_backlog`` publishes ``--events`` acceptances and, behind them,
``--attempts`` delivery attempts per event, in batches of ``--batch`` facts (as ingest and the
deliverer publish them under load) to a throw-away vhost while audit is not running, then starts
audit (in this process, a SQLite store in a temporary folder) and measures until every fact is
stored: wall time, audit's CPU seconds (this process's, the publishing done), facts per CPU
second, and the process's peak RSS. What the benchmark's overload phases leave audit is such a
backlog; this isolates audit's part of it.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from pydantic import SecretStr

from bench.dihya import metric
from bench.run import vhost
from launcher.processes import free_port
from services.audit.app import start
from services.audit.settings import AuditSettings
from shared import topology
from shared.broker import Publisher, connect, declare
from shared.contracts import AuditFact, AuditFactBatch

BASE = datetime(2001, 1, 1, tzinfo=UTC)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _publish(url: str, events: int, attempts: int, batch: int, run: str) -> None:
    connection = await connect(url, service="bench-audit-backlog")
    try:
        await declare(await connection.channel())
        publisher = await Publisher.open(connection)
        accepted = [AuditFact(id=f"fct_{run}_{e}_a", kind="event.accepted",
                              occurred_at=BASE + timedelta(milliseconds=e), service="ingest",
                              event_id=f"evt_{run}_{e}", event_type="bench.load",
                              details={"subject": f"user_{e % 97}"}) for e in range(events)]
        tried = [AuditFact(id=f"fct_{run}_{e}_{n}", kind="delivery.attempted",
                           occurred_at=BASE + timedelta(milliseconds=e), service="deliverer",
                           event_id=f"evt_{run}_{e}", event_type="bench.load",
                           endpoint_id=f"ep_{n}", delivery_id=f"dlv_{run}_{e}_{n}", attempt=1,
                           url="https://example.test/hook", outcome="delivered",
                           status_code=200, duration_ms=12.5)
                 for e in range(events) for n in range(attempts)]
        for kind, facts in (("event.accepted", accepted), ("delivery.attempted", tried)):
            sends = [publisher.send(topology.AUDIT_EXCHANGE, kind,
                                    AuditFactBatch(facts=facts[i:i + batch]))
                     for i in range(0, len(facts), batch)]
            for i in range(0, len(sends), 50):
                await asyncio.gather(*sends[i:i + 50])
        await publisher.close()
    finally:
        await connection.close()


async def measure(url: str, events: int, attempts: int, batch: int,
                  timeout: float, **audit: Any) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    await _publish(url, events, attempts, batch, run)
    total = events * (1 + attempts)
    with tempfile.TemporaryDirectory(prefix="dihya-audit-backlog-") as tmp:
        port = free_port()
        settings = AuditSettings(
            host="127.0.0.1", port=port, database_url=f"sqlite:///{Path(tmp) / 'audit.db'}",
            amqp_url=SecretStr(url), admin_token=SecretStr(uuid.uuid4().hex),
            mode="development", **audit)
        process = psutil.Process()
        rss_before = process.memory_info().rss
        cpu_before, started = _cpu(), time.monotonic()
        stop = await start(settings)
        peak = rss_before
        try:
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{port}"
                while await metric(http, [base], "dihya_audit_records_written") < total:
                    peak = max(peak, process.memory_info().rss)
                    if time.monotonic() - started > timeout:
                        raise TimeoutError(f"not all {total} facts stored in {timeout} s")
                    await asyncio.sleep(0.2)
            elapsed, cpu = time.monotonic() - started, _cpu() - cpu_before
        finally:
            await stop()
    return {"facts": total, "batch": batch, "seconds": round(elapsed, 2),
            "cpu_seconds": round(cpu, 2), "facts_per_cpu_second": round(total / cpu),
            "peak_rss_mib": round(peak / 2**20, 1),
            "rss_growth_mib": round((peak - rss_before) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--attempts", type=int, default=2, help="attempt facts per event")
    parser.add_argument("--batch", type=int, default=100, help="facts per message")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--prefetch", type=int, help="DIHYA_AUDIT_PREFETCH (default: its own)")
    parser.add_argument("--budget", type=int,
                        help="DIHYA_AUDIT_MAX_FACT_BYTES_IN_PROCESS (default: its own)")
    args = parser.parse_args()
    audit = ({"prefetch": args.prefetch} if args.prefetch else {}) | (
        {"max_fact_bytes_in_process": args.budget} if args.budget else {})
    with vhost(args.amqp_url) as url:
        print(asyncio.run(measure(url, args.events, args.attempts, args.batch, args.timeout,
                                  **audit)))


if __name__ == "__main__":
    main()
