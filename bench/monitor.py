"""Samplers that run beside the load: CPU and RSS per process group, queue depths, the machine.

* :class:`ProcSampler` reads, every ``interval`` seconds, the cumulative CPU time and the RSS of
  every process of every group (a service's replicas, RabbitMQ, the sink, the raw stages, the
  load generator itself) with psutil. CPU over a window is the difference of cumulative times,
  so nothing between two samples is missed; RSS is a peak over samples.
* :class:`QueueSampler` asks RabbitMQ for each queue's ready-message count with a passive
  declare (no management plugin needed), every second.
* :class:`BrokerWatch` asks the node for its memory use, its memory limit and its alarms
  (``rabbitmqctl status``, no management plugin either) every ``interval`` seconds while a
  long phase runs: an overload or a deep backlog must not set off a memory alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
import psutil

MIB = 1024 * 1024


@dataclass
class ProcSample:
    at: float
    cpu: dict[str, float]  # group → cumulative CPU seconds (live processes, plus the departed)
    rss: dict[str, int]  # group → sum of RSS over its processes
    rss_max: dict[str, int]  # group → largest single-process RSS
    machine_busy: float  # cumulative busy CPU seconds of the whole machine


class ProcSampler:
    """Background sampler of process groups; ``groups()`` is re-read every sample (replicas
    that restart get picked up)."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]], interval: float = 0.5
                 ) -> None:
        self._groups = groups
        self._interval = interval
        self._procs: dict[int, psutil.Process] = {}
        self._last_cpu: dict[int, float] = {}
        self._gone: dict[str, float] = {}  # CPU of processes that exited, per group
        self._members: dict[str, set[int]] = {}  # each group's processes at the last sample
        self.samples: list[ProcSample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.sample()

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def sample(self) -> ProcSample:
        cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        rss_max: dict[str, int] = {}
        for group, pids in self._groups().items():
            # a process that left the group (a PostgreSQL backend whose connection closed)
            # keeps the CPU it had at its last sample: the group's total never goes down
            for left in self._members.get(group, set()) - set(pids):
                self._gone[group] = self._gone.get(group, 0.0) + self._last_cpu.pop(left, 0.0)
                self._procs.pop(left, None)
            self._members[group] = set(pids)
            total, mem, biggest = self._gone.get(group, 0.0), 0, 0
            for pid in pids:
                try:
                    proc = self._proc(pid)
                    with proc.oneshot():
                        times = proc.cpu_times()
                        used = times.user + times.system
                        resident = proc.memory_info().rss
                except psutil.Error:
                    self._gone[group] = self._gone.get(group, 0.0) + self._last_cpu.pop(pid, 0)
                    self._procs.pop(pid, None)
                    continue
                self._last_cpu[pid] = used
                total += used
                mem += resident
                biggest = max(biggest, resident)
            cpu[group], rss[group], rss_max[group] = total, mem, biggest
        machine = psutil.cpu_times()
        busy = machine.user + machine.system + getattr(machine, "nice", 0.0) + getattr(
            machine, "irq", 0.0) + getattr(machine, "softirq", 0.0) + getattr(
            machine, "steal", 0.0)
        sample = ProcSample(time.time(), cpu, rss, rss_max, busy)
        self.samples.append(sample)
        return sample

    def window(self, start: float, end: float) -> dict[str, Any]:
        """CPU (% of one core) per group and machine-wide, and peak RSS (MiB) per group,
        between ``start`` and ``end`` (wall clock)."""
        inside = [s for s in self.samples if start <= s.at <= end]
        before = [s for s in self.samples if s.at <= start]
        first = before[-1] if before else (inside[0] if inside else None)
        last = inside[-1] if inside else None
        if first is None or last is None or last.at <= first.at:
            return {"cpu_pct": {}, "rss_peak_mib": {}, "rss_peak_process_mib": {},
                    "machine_cpu_pct": None, "other_cpu_pct": None}
        span = last.at - first.at
        cpu = {g: round(100 * (last.cpu.get(g, 0.0) - first.cpu.get(g, 0.0)) / span, 1)
               for g in last.cpu}
        machine = round(100 * (last.machine_busy - first.machine_busy) / span, 1)
        peaks: dict[str, float] = {}
        process_peaks: dict[str, float] = {}
        for s in [first, *inside]:
            for g, value in s.rss.items():
                peaks[g] = max(peaks.get(g, 0.0), value / MIB)
            for g, value in s.rss_max.items():
                process_peaks[g] = max(process_peaks.get(g, 0.0), value / MIB)
        return {
            "cpu_pct": cpu,
            "rss_peak_mib": {g: round(v, 1) for g, v in peaks.items()},
            "rss_peak_process_mib": {g: round(v, 1) for g, v in process_peaks.items()},
            "machine_cpu_pct": machine,
            "other_cpu_pct": round(max(0.0, machine - sum(cpu.values())), 1),
        }

    def peak_rss(self) -> dict[str, float]:
        """Largest single-process RSS seen per group over the whole run, MiB."""
        out: dict[str, float] = {}
        for s in self.samples:
            for g, value in s.rss_max.items():
                out[g] = max(out.get(g, 0.0), round(value / MIB, 1))
        return out


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine, when it can be told."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and \
                    conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


def postgres_pids(postmaster: int | None) -> list[int]:
    """PostgreSQL's server on this machine: the postmaster and its children (a backend per
    connection, the WAL writer, the checkpointer…), read again at every sample since backends
    come and go. Empty when the server is not local."""
    if postmaster is None:
        return []
    try:
        return [postmaster, *(c.pid for c in psutil.Process(postmaster).children())]
    except psutil.Error:
        return []


def rabbitmq_pids(port: int | None = None) -> list[int]:
    """The local RabbitMQ node's Erlang VM (``beam.smp``), if it runs on this machine: the one
    listening on ``port`` when it can be told (a node of one's own, beside the machine's)."""
    listening = listening_pid(port) if port is not None else None
    if listening is not None:
        return [listening]
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "beam.smp" and "rabbit" in " ".join(
                    proc.info["cmdline"] or []):
                found.append(proc.pid)
    return found


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


DEPTHS_TIMEOUT = 10.0
"""Seconds one round of queue-depth reads may take."""


class QueueSampler:
    """Ready-message count of each queue, every ``interval`` seconds (passive declares)."""

    def __init__(self, url: str, queues: list[str], interval: float = 1.0) -> None:
        self._url = url
        self.queues = queues
        self._interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._task: asyncio.Task[None] | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect(self._url)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            await self._connection.close()

    async def depths(self) -> dict[str, int]:
        """Depth of each queue; what was read within ``DEPTHS_TIMEOUT`` if the broker stalls
        (a run once hung after its last phase with every process idle, waiting on a reply)."""
        assert self._connection is not None
        out: dict[str, int] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEPTHS_TIMEOUT):
                channel = await self._connection.channel()
                try:
                    for name in self.queues:
                        try:
                            queue = await channel.declare_queue(name, passive=True)
                        except Exception:  # not declared (yet): the broker closed the channel
                            channel = await self._connection.channel()
                            continue
                        result = queue.declaration_result
                        out[name] = int(result.message_count or 0)
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
        return out

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.samples.append((time.time(), await self.depths()))
            await asyncio.sleep(self._interval)

    def window(self, start: float, end: float, load_end: float | None = None,
               settled_from: float | None = None) -> dict[str, dict[str, float]]:
        """Per queue: the largest depth seen in the window, the last one, the depth when load
        stopped, and two trends while load was on (least-squares slopes, messages/s): over
        the whole load (``slope_per_s``, from ``start``) and once the pipeline has filled
        (``settled_slope_per_s``, from ``settled_from``).

        Why two: a queue in front of a busy stage fills to a standing depth in the first
        second or two of a phase and then holds; over a short phase that fill alone reads as a
        steep slope. Growth *without bound* is what is left after it: the settled trend."""
        inside = [(at, d) for at, d in self.samples if start <= at <= end]
        out: dict[str, dict[str, float]] = {}
        for name in self.queues:
            points = [(at, d[name]) for at, d in inside if name in d]
            if not points:
                continue
            loaded = [(t, v) for t, v in points if load_end is None or t <= load_end]
            figures = {"max": max(v for _, v in points), "end": points[-1][1],
                       "at_load_end": loaded[-1][1] if loaded else 0,
                       "slope_per_s": round(_slope(loaded), 1)}
            if settled_from is not None:
                settled = [(t, v) for t, v in loaded if t >= settled_from]
                figures["settled_slope_per_s"] = round(_slope(settled), 1)
            out[name] = figures
        return out


def _slope(points: list[tuple[float, int]]) -> float:
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


STATUS_TIMEOUT = 20.0
"""Seconds one ``rabbitmqctl status`` may take (a node too busy to answer is a finding too:
``error`` says so)."""


@dataclass
class BrokerSample:
    at: float
    mem_used: int
    """What the node counts against its limit (RSS with the default strategy), bytes."""
    mem_limit: int
    alarms: list[str]
    quorum_ets: int
    """Memory of the quorum queues' in-memory tables (Raft log and index), bytes."""
    breakdown: dict[str, int]
    """The node's memory by category (``rabbitmqctl status``), bytes."""


class BrokerWatch:
    """The node's memory and alarms, from ``rabbitmqctl -q status --formatter json`` every
    ``interval`` seconds (each call costs the machine about 0.8 s of CPU: sample sparingly).

    ``ctl`` is the command that reaches the node (``rabbitmqctl``, or with ``-n`` and the
    environment of a node of one's own); a node it cannot reach leaves ``error`` set and no
    samples, never a made-up figure."""

    def __init__(self, ctl: str = "rabbitmqctl", interval: float = 15.0) -> None:
        self._ctl = shlex.split(ctl)
        self._interval = interval
        self.samples: list[BrokerSample] = []
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def _status(self) -> BrokerSample | None:
        try:
            done = subprocess.run([*self._ctl, "-q", "status", "--formatter", "json"],
                                  capture_output=True, timeout=STATUS_TIMEOUT, check=True)
            data = orjson.loads(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {str(exc)[:200]}"
            return None
        memory = data.get("memory") or {}
        total = memory.get("total") or {}
        used = int(total.get("rss") or total.get("allocated") or total.get("erlang") or 0)
        return BrokerSample(time.time(), used, int(data.get("vm_memory_high_watermark_limit")
                                                   or 0),
                            [str(a) for a in data.get("alarms") or []],
                            int(memory.get("quorum_ets") or 0),
                            {k: int(v) for k, v in memory.items() if isinstance(v, int)})

    async def sample(self) -> BrokerSample | None:
        found = await asyncio.to_thread(self._status)
        if found is not None:
            self.samples.append(found)
        return found

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sample()

    async def start(self) -> BrokerSample | None:
        """Sample now, then every ``interval`` seconds until :meth:`stop`; the first sample."""
        first = await self.sample()
        self._task = asyncio.create_task(self._run())
        return first

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sample()  # the state at the end, whatever the interval

    def window(self, start: float) -> dict[str, Any]:
        """Memory and alarms seen since ``start``: the peak against the limit, every alarm."""
        inside = [s for s in self.samples if s.at >= start]
        if not inside:
            return {"samples": 0, "error": self.error}
        peak = max(inside, key=lambda s: s.mem_used)
        limit = peak.mem_limit
        return {
            "samples": len(inside),
            "mem_used_start_mib": round(inside[0].mem_used / MIB, 1),
            "mem_used_peak_mib": round(peak.mem_used / MIB, 1),
            "mem_limit_mib": round(limit / MIB, 1),
            "peak_share_of_limit": round(peak.mem_used / limit, 3) if limit else None,
            "quorum_ets_peak_mib": round(max(s.quorum_ets for s in inside) / MIB, 1),
            "alarms": sorted({a for s in inside for a in s.alarms}),
            "error": self.error,
        }
