"""Talking to the Dihya under test through its public APIs only: endpoints, tokens, the audit
log (for audit lag) and the Prometheus metrics (for deferrals)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from bench.load import phase_of
from bench.sink import summarize


async def api(http: aiohttp.ClientSession, method: str, url: str, token: str,
              body: Any = None, params: dict[str, str] | None = None) -> Any:
    async with http.request(method, url, json=body, params=params,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url} → {resp.status}: {data}")
        return data


async def register(http: aiohttp.ClientSession, ingest: str, admin: str, url: str,
                   events: list[str], secret: str) -> str:
    """Register an endpoint with a secret the sink already knows; return its id."""
    created = await api(http, "POST", f"{ingest}/v1/endpoints", admin,
                        {"url": url, "events": events, "secret": secret,
                         "description": "benchmark sink"})
    return str(created["id"])


async def publisher_token(http: aiohttp.ClientSession, ingest: str, admin: str) -> str:
    created = await api(http, "POST", f"{ingest}/v1/tokens", admin,
                        {"role": "publisher", "description": "benchmark load generator"})
    return str(created["token"])


async def in_flight(http: aiohttp.ClientSession, url: str) -> float:
    """Messages a service's consumers hold unacked (``dihya_consumer_in_flight_messages``, all
    queues): work a queue's depth no longer shows."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("dihya_consumer_in_flight_messages{"))


async def metric(http: aiohttp.ClientSession, urls: list[str], name: str) -> float:
    """Sum of a Prometheus counter over replicas and over its labels' series (``name``
    without ``_total`` is accepted too)."""
    total = 0.0
    for url in urls:
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith((name + " ", name + "_total ", name + "{", name + "_total{")):
                total += float(line.split()[-1])
    return total


def _when(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class AuditFollower:
    """Reads ``delivery.attempted`` records page by page, remembering where it stopped.

    The API gives a ``next_cursor`` only when more records follow, so the cursor of the last,
    partial page is kept and that page read again next time (records are deduplicated by
    ``seq``). Records are grouped by the phase encoded in their event id.
    """

    http: aiohttp.ClientSession
    base: str
    token: str
    page: int = 500
    cursor: str | None = None
    seen_seq: set[int] = field(default_factory=set)
    by_phase: dict[str, dict[str, tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(dict))
    """phase → delivery id → (occurred_at, recorded_at) of its first attempt record."""

    async def poll(self) -> None:
        while True:
            params = {"kind": "delivery.attempted", "limit": str(self.page)}
            if self.cursor:
                params["cursor"] = self.cursor
            data = await api(self.http, "GET", f"{self.base}/v1/audit/records", self.token,
                             params=params)
            for record in data["records"]:
                if record["seq"] in self.seen_seq:
                    continue
                self.seen_seq.add(record["seq"])
                phase = phase_of(record.get("event_id") or "")
                if phase is None or record.get("delivery_id") is None:
                    continue
                self.by_phase[phase].setdefault(
                    record["delivery_id"],
                    (_when(record["occurred_at"]), _when(record["recorded_at"])))
            if not data["next_cursor"]:
                return
            self.cursor = data["next_cursor"]

    async def wait(self, phase: str, count: int, timeout: float) -> bool:
        """Poll until ``count`` distinct deliveries of ``phase`` are in the log."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.poll()
            if len(self.by_phase[phase]) >= count:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.2)

    def lag(self, phase: str, load_stopped: float, last_receipt: float | None,
            expected: int, complete: bool) -> dict[str, Any]:
        """When the audit log had every delivery of ``phase``, relative to when load stopped
        and to when the sink got its last delivery; and the per-record commit lag."""
        records = self.by_phase.get(phase, {})
        if not records:
            return {"complete": False, "records": 0, "expected": expected}
        done = max(recorded for _, recorded in records.values())
        return {
            "complete": complete,
            "records": len(records),
            "expected": expected,
            # 0: the log already had everything when load stopped (or the last delivery landed)
            "after_load_stopped_s": round(max(0.0, done - load_stopped), 3),
            "after_last_receipt_s": (round(max(0.0, done - last_receipt), 3)
                                     if last_receipt is not None else None),
            "record_lag_ms": summarize([(rec - occ) * 1000 for occ, rec in records.values()]),
        }
