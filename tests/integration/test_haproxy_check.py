"""The shipped HAProxy example (deploy/haproxy/haproxy.cfg) checks AMQP, not TCP.

HAProxy runs the example's own ``backend`` settings with two servers: the test broker, and a
"frozen node" — a socket that accepts TCP connections (as a SIGSTOPped broker's kernel does)
and never says a word. The check must keep the broker up and mark the frozen one down within
its stated bound (``inter`` x ``fall`` + ``timeout check``), and an AMQP client through the
proxy must reach the broker. A TCP check would have kept the frozen node up: that is checked
too, so this test cannot pass for the wrong reason.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)


def config_for(broker: tuple[str, int], frozen: int, bind: int, stats: Path, *,
               tcp_only: bool = False) -> str:
    """The shipped file with its frontend port, servers and (for the test) a stats socket
    changed; everything else — the check itself — as shipped."""
    text = CONFIG.read_text()
    text = text.replace("bind :5672", f"bind 127.0.0.1:{bind}")
    text = text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)
    text = re.sub(r"^\s*server rabbit-\d .*\n", "", text, flags=re.MULTILINE)
    if tcp_only:  # what the example must not be: a bare TCP check
        text = re.sub(r"^\s*tcp-check (send-binary|expect) .*\n", "", text, flags=re.MULTILINE)
    host, port = broker
    return text + (f"    server broker {host}:{port} check\n"
                   f"    server frozen 127.0.0.1:{frozen} check\n")


def states(stats: Path) -> dict[str, str]:
    """Server name → HAProxy's status (UP, DOWN, …) from the stats socket's ``show stat``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    found = {}
    for line in data.decode().splitlines():
        parts = line.split(",")
        if len(parts) > 17 and parts[0] == "rabbitmq" and parts[1] not in ("BACKEND",):
            found[parts[1]] = parts[17]
    return found


@pytest.fixture
def frozen_node() -> Iterator[int]:
    """A listening socket nobody reads: the kernel completes handshakes, no byte comes back."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def haproxy(config: str, workdir: Path) -> subprocess.Popen[bytes]:
    assert HAPROXY is not None
    path = workdir / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    return subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
@pytest.mark.parametrize("tcp_only", [False, True], ids=["as-shipped", "tcp-only"])
async def test_the_amqp_check_marks_a_frozen_node_down(
        amqp_url: str, frozen_node: int, tmp_path: Path, tcp_only: bool) -> None:
    url = urlsplit(amqp_url)
    broker = (url.hostname or "127.0.0.1", url.port or 5672)
    bind, stats = free_port(), tmp_path / "stats.sock"
    proc = haproxy(config_for(broker, frozen_node, bind, stats, tcp_only=tcp_only), tmp_path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await wait_for(lambda: stats.exists(), timeout=10)

        async def settled() -> bool:  # both checked at least "fall" times
            found = states(stats)
            return found.get("broker") == "UP" and found.get("frozen", "").startswith(
                "DOWN" if not tcp_only else "UP")

        # the example's bound: inter 2s x fall 2 + timeout check 2s, and the first check
        await wait_for(settled, timeout=12)
        took = loop.time() - started
        found = states(stats)
        print(f"\n{'shipped AMQP check' if not tcp_only else 'bare TCP check'}: {found} "
              f"after {took:.1f} s")
        if tcp_only:
            await asyncio.sleep(6)  # the bound above, passed: a TCP check keeps it up
            assert states(stats)["frozen"].startswith("UP")
            return
        # a client through the proxy reaches the broker (the frozen node is out of the pool)
        proxied = amqp_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{bind}", 1)
        for _ in range(4):  # leastconn: several connections, all to the one live server
            connection = await aio_pika.connect(proxied, timeout=5)
            await connection.close()
    finally:
        proc.terminate()
        proc.wait(10)
