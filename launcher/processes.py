"""Start, stop and kill Dihya's four services as separate OS processes.

The demo, the end-to-end tests and the benchmark all run the real thing: one
``python -m services.<name>`` process per service, configured only through environment
variables, exactly as a deployment would. Each process's stdout (JSON log lines) goes to
``<workdir>/<service>.log`` so tests can scan the logs (for leaked secrets, say).

A service may run as several processes (``replicas={"deliverer": 2}``): competing consumers on
the same queues, each with its own HTTP port; replica ``i > 0`` logs to
``<workdir>/<service>-<i>.log``. ``procs``, ``ports`` and ``url`` name the first replica, so
code written for one process per service works unchanged; ``replica_procs`` has them all.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

SERVICES = ("audit", "signer", "deliverer", "ingest")
_PORT_VARS = {
    "ingest": "DIHYA_INGEST_PORT",
    "signer": "DIHYA_SIGNER_PORT",
    "deliverer": "DIHYA_DELIVERER_PORT",
    "audit": "DIHYA_AUDIT_PORT",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@dataclass
class System:
    """The four services as processes, on one broker URL, with state under ``workdir``."""

    amqp_url: str
    workdir: Path
    admin_token: str = field(default_factory=lambda: "dihya_admin_" + secrets.token_urlsafe(24))
    env: dict[str, str] = field(default_factory=dict)
    database_urls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    """Processes per service (default 1). Several replicas of ingest or signer need PostgreSQL
    (``database_urls``); SQLite files are not shared safely between writers on every setup."""
    replica_ports: dict[str, list[int]] = field(default_factory=dict)
    replica_procs: dict[str, list[subprocess.Popen[bytes] | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, count in self.replicas.items():
            if name not in SERVICES or count < 1:
                raise ValueError(f"replicas: unknown service or count below 1: {name}={count}")
        self.replica_ports = {name: [free_port() for _ in range(self.count(name))]
                              for name in SERVICES}
        self.ports = {name: ports[0] for name, ports in self.replica_ports.items()}
        self.replica_procs = {name: [None] * self.count(name) for name in SERVICES}
        self._master_key = fernet_key()
        self._headers_key = fernet_key()  # seals custom headers from signer to deliverer
        # the audit log's signing keys, from outside its database as production mode wants
        self.audit_head_seed = os.urandom(32)
        self._audit_checkpoint_key = base64.b64encode(os.urandom(32)).decode()

    def count(self, service: str) -> int:
        """How many processes ``service`` runs as."""
        return self.replicas.get(service, 1)

    def url(self, service: str, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.replica_ports[service][replica]}"

    def console_url(self) -> str:
        """The web console, served by the first ingest replica."""
        return self.url("ingest") + "/console/"

    def heads_file(self, replica: int = 0) -> Path:
        """Where audit replica ``replica`` appends its signed heads (one head chain each)."""
        return self.workdir / ("audit-heads.jsonl" if replica == 0
                               else f"audit-heads-{replica}.jsonl")

    def log_path(self, service: str, replica: int = 0) -> Path:
        return self.workdir / (f"{service}.log" if replica == 0 else f"{service}-{replica}.log")

    def pids(self, service: str) -> list[int]:
        """Process ids of the running replicas of ``service``."""
        return [p.pid for p in self.replica_procs.get(service, []) if p is not None
                and p.poll() is None]

    def service_env(self, service: str, replica: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIHYA_")}
        env.update(
            {
                "DIHYA_AMQP_URL": self.amqp_url,
                "DIHYA_ADMIN_TOKEN": self.admin_token,
                "DIHYA_LOG_FORMAT": "json",
                # events and endpoints naming no tenant go to the migrated default (#21)
                "DIHYA_DEFAULT_TENANT": "default",
                "DIHYA_SIGNER_MASTER_KEY": self._master_key,
                "DIHYA_HEADERS_KEY": self._headers_key,
                # local receivers (demo, tests) live on loopback, which production refuses
                "DIHYA_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
                _PORT_VARS[service]: str(self.replica_ports[service][replica]),
                "PYTHONUNBUFFERED": "1",
                # the web console (served by ingest) reads the audit API from the browser
                "DIHYA_INGEST_CONSOLE_AUDIT_URL": self.url("audit"),
                "DIHYA_AUDIT_CORS_ORIGINS": ",".join(
                    self.url("ingest", i) for i in range(self.count("ingest"))),
                "DIHYA_AUDIT_HEAD_KEY": base64.b64encode(self.audit_head_seed).decode(),
                "DIHYA_AUDIT_CHECKPOINT_KEY": self._audit_checkpoint_key,
                "DIHYA_AUDIT_HEADS_FILE": str(self.heads_file(replica)),
            }
        )
        for name in ("ingest", "signer", "audit"):
            env[f"DIHYA_{name.upper()}_DATABASE_URL"] = self.database_urls.get(
                name, f"sqlite:///{self.workdir}/{name}.db"
            )
        env.update(self.env)
        return env

    def spawn(self, service: str, replica: int | None = None) -> None:
        """Start ``service``'s process (every replica, or only ``replica``)."""
        for index in range(self.count(service)) if replica is None else (replica,):
            log = self.log_path(service, index).open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                env=self.service_env(service, index),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
            )
            log.close()
            self.replica_procs[service][index] = proc
            if index == 0:
                self.procs[service] = proc

    async def wait_ready(self, service: str, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` of every replica answers 200 (broker connected, storage
        reachable)."""
        await asyncio.gather(*(self._wait_replica(service, i, timeout)
                               for i, p in enumerate(self.replica_procs[service])
                               if p is not None))

    async def _wait_replica(self, service: str, replica: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                proc = self.replica_procs[service][replica]
                assert proc is not None
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{service} exited with {proc.returncode}; log:\n"
                        + self.log_path(service, replica).read_text()[-3000:]
                    )
                try:
                    async with http.get(f"{self.url(service, replica)}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"{service} not ready within {timeout}s")
                await asyncio.sleep(0.1)

    async def start(self, *services: str) -> None:
        for name in services or SERVICES:
            self.spawn(name)
        await asyncio.gather(*(self.wait_ready(n) for n in services or SERVICES))

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every replica of ``service``."""
        for proc in self.replica_procs[service]:
            if proc is not None:
                proc.send_signal(sig)

    async def stop(self, *services: str, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM each service and wait for it; returns the exit codes (per service: the
        first replica's failing code if any failed, else 0; None if one had to be killed)."""
        names = [n for n in (services or SERVICES) if n in self.procs]
        running = [(n, p) for n in names for p in self.replica_procs[n] if p is not None]
        for _, proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in running:
            try:
                code: int | None = await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
            if name not in codes or codes[name] == 0:
                codes[name] = code
        return codes
