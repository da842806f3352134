"""Logs are JSON lines carrying the service, and nothing secret-shaped survives in them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from shared.logging import _PATTERNS, scrub

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = """
import structlog
from shared.logging import setup
setup("ingest")
log = structlog.get_logger()
log.info("step", event_id="evt_1", secret="whsec_c2VjcmV0", token="dihya_abc")
log.info("oops", error="bad Bearer dihya_abc and whsec_c2VjcmV0 at amqp://guest:pw@host/")
try:
    raise ValueError("whsec_c2VjcmV0 in an exception")
except ValueError:
    log.exception("crashed")
"""


def test_json_lines_without_secrets() -> None:
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, check=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}).stdout
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [line["event"] for line in lines] == ["step", "oops", "crashed"]
    assert all(line["service"] == "ingest" and line["level"] for line in lines)
    assert lines[0]["event_id"] == "evt_1"
    assert b"whsec_c2VjcmV0" not in out
    assert b"dihya_abc" not in out
    assert b":pw@" not in out


_PIECES = st.sampled_from(["whsec_", "c2Vj", "Bearer", "bearer", "BEARER", " ", "\t", "://",
                           "user", ":", "pw", "@", "/", "x", "é", "evt_1", "."])


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_the_quick_check_never_skips_a_secret(text: str) -> None:
    """scrub's one-search gate answers exactly as the three substitutions would alone."""
    reference = _PATTERNS[0].sub("whsec_***", text)
    reference = _PATTERNS[1].sub("Bearer ***", reference)
    reference = _PATTERNS[2].sub(r"\1:***@", reference)
    assert scrub(text) == reference


LIBRARIES = """
import asyncio, logging, warnings
import structlog
from shared.logging import setup
setup("deliverer")
try:
    raise ConnectionResetError("peer gone at amqp://guest:pw@host/")
except ConnectionResetError:
    logging.getLogger("aio_pika.tools").exception("Callback %r failed", "<OneShotCallback>")
logging.getLogger("aiormq.connection").warning("Server connection %r was stuck", "conn")
logging.getLogger("aiohttp.access").info("GET /readyz 200")
async def boom() -> None:
    raise asyncio.IncompleteReadError(b"", 8)
async def main() -> None:
    task = asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0)
    del task  # "Task exception was never retrieved", from asyncio's logger
asyncio.run(main())
import gc; gc.collect()
warnings.warn("a library's warning")
structlog.get_logger().info("after")
raise RuntimeError("nothing caught this")
"""


def test_library_logs_and_tracebacks_are_json_lines_too() -> None:
    """aio-pika's, aiormq's, aiohttp's and asyncio's records, a warning and an uncaught
    exception: every line of the output is one JSON object, tracebacks inside it."""
    done = subprocess.run([sys.executable, "-c", LIBRARIES], capture_output=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 1  # the uncaught exception still ends the process
    out = done.stdout + done.stderr
    lines = [orjson.loads(line) for line in out.splitlines()]  # raises on any raw line
    by_logger = {line.get("logger"): line for line in lines}
    callback = by_logger["aio_pika.tools"]
    assert callback["level"] == "error" and "ConnectionResetError" in callback["exception"]
    assert by_logger["aiormq.connection"]["level"] == "warning"
    assert by_logger["aiohttp.access"]["event"] == "GET /readyz 200"
    assert "IncompleteReadError" in by_logger["asyncio"]["exception"]
    assert "a library's warning" in by_logger["py.warnings"]["event"]
    assert "nothing caught this" in by_logger["dihya"]["exception"]
    assert all(line["service"] == "deliverer" and line["timestamp"] for line in lines)
    assert b":pw@" not in out
