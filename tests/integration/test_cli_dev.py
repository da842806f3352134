"""``dihya dev`` as a user runs it: a process that starts the four services, prints where they
are and the admin token, serves the other commands, and stops everything on Ctrl-C."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import stat
import sys
from pathlib import Path

import pytest

from cli.errors import Exit
from cli.main import run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def _line(stream: asyncio.StreamReader, seen: list[str]) -> str:
    line = (await stream.readline()).decode()
    if not line:
        raise AssertionError("dihya dev ended early:\n" + "".join(seen))
    seen.append(line)
    return line


async def test_dev_runs_the_four_services_until_ctrl_c(amqp_url: str, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIHYA_")}
    env.update(DIHYA_LANG="en", DIHYA_DELIVERER_RETRY_SCHEDULE="1s")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "dev", "--free-ports", "--data-dir", str(data),
        "--amqp-url", amqp_url, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "Press Ctrl-C" not in await _line(proc.stdout, seen):
                pass
        text = "".join(seen)
        urls = dict(re.findall(r"^  (ingest|signer|deliverer|audit)\s+(http://\S+)", text,
                               re.MULTILINE))
        assert set(urls) == {"ingest", "signer", "deliverer", "audit"}, text
        token = re.search(r"Admin token generated for this run: (\S+)", text)
        assert token is not None, text
        assert f"DIHYA_TOKEN={token.group(1)}" in text

        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(
            run, ["audit", "verify", "--json"], stdout=out, stderr=err,
            env={"DIHYA_INGEST_URL": urls["ingest"], "DIHYA_AUDIT_URL": urls["audit"],
                 "DIHYA_TOKEN": token.group(1), "HOME": str(tmp_path)})
        assert code == Exit.OK, err.getvalue()
        assert '"ok": true' in out.getvalue()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), 60)
        code = await asyncio.wait_for(proc.wait(), 10)
    tail = rest.decode()
    assert code == 0, "".join(seen) + tail
    assert "Stopped (exit codes: audit 0, signer 0, deliverer 0, ingest 0)." in tail
    key = data / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert {p.name for p in data.iterdir()} >= {"ingest.db", "signer.db", "audit.db",
                                                "ingest.log", "master.key"}
