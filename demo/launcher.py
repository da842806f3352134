"""Start, stop and kill Dihya's four services as separate OS processes.

The demo, the end-to-end tests and the benchmark all run the real thing: one
``python -m services.<name>`` process per service, configured only through environment
variables, exactly as a deployment would. Each process's stdout (JSON log lines) goes to
``<workdir>/<service>.log`` so tests can scan the logs (for leaked secrets, say).
"""

from __future__ import annotations

import asyncio
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

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in SERVICES}
        self._master_key = fernet_key()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def log_path(self, service: str) -> Path:
        return self.workdir / f"{service}.log"

    def service_env(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIHYA_")}
        env.update(
            {
                "DIHYA_AMQP_URL": self.amqp_url,
                "DIHYA_ADMIN_TOKEN": self.admin_token,
                "DIHYA_LOG_FORMAT": "json",
                "DIHYA_SIGNER_MASTER_KEY": self._master_key,
                # local receivers (demo, tests) live on loopback, which production refuses
                "DIHYA_DELIVERER_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
                _PORT_VARS[service]: str(self.ports[service]),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name in ("ingest", "signer", "audit"):
            env[f"DIHYA_{name.upper()}_DATABASE_URL"] = self.database_urls.get(
                name, f"sqlite:///{self.workdir}/{name}.db"
            )
        env.update(self.env)
        return env

    def spawn(self, service: str) -> None:
        log = self.log_path(service).open("ab")
        self.procs[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env=self.service_env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
        log.close()

    async def wait_ready(self, service: str, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200 (broker connected, storage reachable)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                proc = self.procs[service]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{service} exited with {proc.returncode}; log:\n"
                        + self.log_path(service).read_text()[-3000:]
                    )
                try:
                    async with http.get(f"{self.url(service)}/readyz") as resp:
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
        self.procs[service].send_signal(sig)

    async def stop(self, *services: str, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM each service and wait for it; returns the exit codes."""
        names = [n for n in (services or SERVICES) if n in self.procs]
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name in names:
            try:
                codes[name] = await asyncio.to_thread(self.procs[name].wait, timeout)
            except subprocess.TimeoutExpired:
                self.procs[name].kill()
                codes[name] = None
        return codes
