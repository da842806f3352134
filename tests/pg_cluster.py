"""A PostgreSQL cluster of a test's own, which it may stop and start (an outage), never the
machine's: ``initdb`` and ``pg_ctl`` from the installed server, on a free port, in a temporary
directory removed afterwards. As root, the server runs as the ``postgres`` user (PostgreSQL
refuses to run as root)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port

PG_BIN = Path(os.environ.get("DIHYA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PgCluster:
    """One data directory and one server process; :meth:`stop` and :meth:`start` at will."""

    def __init__(self, root: Path, port: int, user: str | None) -> None:
        self.root = root
        self.port = port
        self._user = user
        self._data = root / "data"
        self._log = root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [*(["runuser", "-u", self._user, "--"] if self._user else []), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr[-2000:]}")

    async def init(self) -> None:
        await asyncio.to_thread(self._run, str(PG_BIN / "initdb"), "-D", str(self._data),
                                "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    async def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        await asyncio.to_thread(self._run, str(PG_BIN / "pg_ctl"), "-D", str(self._data),
                                "-l", str(self._log), "-o", options, "-w", "-t", "60", "start")

    async def stop(self) -> None:
        """A fast shutdown: sessions are terminated, as in a failover or a restart."""
        await asyncio.to_thread(self._run, str(PG_BIN / "pg_ctl"), "-D", str(self._data),
                                "-m", "fast", "-w", "-t", "60", "stop")

    async def create_database(self, name: str) -> str:
        import asyncpg

        admin = await asyncpg.connect(self.url, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextlib.asynccontextmanager
async def pg_cluster() -> AsyncIterator[PgCluster]:
    """A running cluster of this test's own; stopped and removed on exit."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (DIHYA_TEST_PG_BIN)")
    user = None
    root = Path(tempfile.mkdtemp(prefix="dihya-pg-"))
    if os.geteuid() == 0:
        user = "postgres"
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root and no postgres user to run the server as")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(root, free_port(), user)
    try:
        await cluster.init()
        await cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
