"""The README's commands, run as written against the real services.

The quickstart's blocks (marked ``run`` or ``until``, see :mod:`tests.readme_blocks`) go, in
order, to ONE bash process — variables, shell functions and background jobs carry from block to
block as in the reader's terminal. It starts in a temporary directory that looks like a fresh
checkout from where the commands stand: ``.venv`` links to the virtual environment running these
tests (what ``bin/demo`` creates), ``examples`` to the repository's; ``dihya dev`` therefore keeps
its SQLite databases in that directory. What differs from a reader's terminal, and only this:
``DIHYA_AMQP_URL`` names a virtual host of this test's own (so the README's default broker URL is
not used), ``HOME`` is the temporary directory (no CLI profile of this machine is read), the
virtual environment is off the ``PATH`` until the README activates it, and messages are in
English (``LANG=C.UTF-8``), as the README shows them. The quickstart's fixed ports (8080 to
8083, 8000) must be free: they are the machine's, not the test's, so the test holds a
machine-wide lock while it runs (two test runs on one machine take turns).

``bin/demo``'s demo runs from the repository's directory (see :func:`test_bin_demo`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AMQP_BASE, _rabbitmqctl, _with_path
from tests.readme_blocks import ROOT, Block, blocks

pytestmark = pytest.mark.integration

PORTS = (8080, 8081, 8082, 8083, 8000)
"""What the quickstart binds: the four services (``dihya dev``) and the example receiver."""
BLOCK_TIMEOUT = 120.0
"""Seconds a ``run`` block may take (``dihya dev`` waits for four services to be ready)."""
UNTIL_TIMEOUT = 90.0
"""Seconds an ``until`` block is re-run for: the quickstart's first retry is due 15 s ± 20 %
after the failure; the rest is slack for a loaded 2-vCPU machine."""
UNTIL_PAUSE = 1.0
"""Seconds between two runs of an ``until`` block, as a reader would run the query again."""
LOCK = Path(tempfile.gettempdir()) / "dihya-readme-quickstart.lock"
"""Held while the quickstart runs: its ports are fixed, so runs on one machine take turns."""
LOCK_WAIT = 300.0
"""Seconds to wait for another run's quickstart to finish."""
BROKEN = ("command not found", "Traceback (most recent call last)", "No such file or directory",
          "Usage:", "usage:")
"""Output that means a command did not run as written, whatever its exit status."""


class Shell:
    """One bash process fed the README's blocks; its output read by a thread, line by line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    def run(self, code: str, timeout: float) -> tuple[int, str]:
        """Run ``code`` in the shell; its exit status and the output until it ended."""
        mark = f"__readme_block_{uuid.uuid4().hex}__"
        assert self.proc.stdin is not None
        # printf's arguments are expanded before it runs: $? is the block's status; the newline
        # ends a last line printed without one (curl's answer)
        self.proc.stdin.write(f"{code}\nprintf '\\n{mark} %d\\n' $?\n".encode())
        self.proc.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no end after {timeout:g} s; output:\n{''.join(out)}"
                                     ) from None
            if line is None:
                raise AssertionError(f"the shell exited; output:\n{''.join(out)}")
            self.transcript.append(line)
            if line.startswith(mark):
                return int(line.split()[1]), "".join(out)
            out.append(line)

    def close(self) -> int | None:
        """End the shell; kill whatever it left running (the README's last block should have
        stopped everything). Returns the shell's exit code, or None if it had to be killed."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"exit\n")
            self.proc.stdin.close()
            return self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(2)

    def leftovers(self) -> bool:
        """Whether any process of the shell's group still runs."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _busy(port: int) -> bool:
    """Whether a server could not listen on ``port`` (as servers do, with SO_REUSEADDR: the
    connections a previous run closed may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{LOCK} held for {LOCK_WAIT:g} s"
                time.sleep(1.0)  # polling a lock another process holds: no event to await
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def own_vhost() -> Iterator[str]:
    """A virtual host of this test's own: no other test's leftover events reach its endpoint."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs a local rabbitmqctl for a vhost of its own")
    vhost = f"dihya-test-readme-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield _with_path(AMQP_BASE, "/" + vhost)
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def _fresh_terminal(home: Path, amqp_url: str) -> dict[str, str]:
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DIHYA_", "LC_", "XDG_")) and k not in ("VIRTUAL_ENV", "LANGUAGE")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != venv_bin)
    env.update(HOME=str(home), LANG="C.UTF-8", DIHYA_AMQP_URL=amqp_url)
    return env


def _check(block: Block, status: int, output: str) -> None:
    where = f"README.md:{block.line}"
    for broken in BROKEN:
        assert broken not in output, f"{where}: {broken!r} in its output:\n{output}"
    assert status == block.status, f"{where}: exit {status}, not {block.status}:\n{output}"
    for text in block.expect:
        assert text in output, f"{where}: {text!r} not in its output:\n{output}"


@pytest.mark.timeout(600)
def test_the_quickstart_runs_as_written(own_vhost: str, tmp_path: Path) -> None:
    with _machine_lock():
        _quickstart(own_vhost, tmp_path)


def _quickstart(own_vhost: str, tmp_path: Path) -> None:
    busy = [port for port in PORTS if _busy(port)]
    assert not busy, f"the quickstart needs ports {busy} and something else holds them"
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    home = tmp_path / "home"
    home.mkdir()
    shell = Shell(tmp_path, _fresh_terminal(home, own_vhost))
    executed = [b for b in blocks() if b.executed]
    assert len(executed) >= 8, "the quickstart lost its blocks"
    try:
        for block in executed:
            if block.mode == "run":
                status, output = shell.run(block.code, BLOCK_TIMEOUT)
            else:
                assert block.until is not None
                deadline = time.monotonic() + UNTIL_TIMEOUT
                while True:
                    status, output = shell.run(block.code, BLOCK_TIMEOUT)
                    if block.until in output or time.monotonic() > deadline:
                        break
                    time.sleep(UNTIL_PAUSE)
                assert block.until in output, (
                    f"README.md:{block.line}: {block.until!r} not seen in {UNTIL_TIMEOUT:g} s; "
                    f"last output:\n{output}")
            _check(block, status, output)
    finally:
        code = shell.close()
        transcript = "".join(shell.transcript)
    assert code == 0, f"the shell did not end cleanly ({code}):\n{transcript}"
    assert not shell.leftovers(), "the README's last block left processes running"
    data = (tmp_path / "data" / "dev").resolve()
    databases = sorted(p.name for p in data.glob("*.db"))
    assert databases == ["audit.db", "ingest.db", "signer.db"], databases
    for name in ("ingest", "signer", "audit"):  # each says where its database is
        log = (data / f"{name}.log").read_text()
        assert '"database_opened"' in log and f'"path":"{data / name}.db"' in log, name


@pytest.mark.timeout(300)
def test_bin_demo() -> None:
    """What ``bin/demo`` runs once its virtual environment is installed (``python -m demo``),
    from the repository's directory: it uses RabbitMQ at the default URL (here the tests'
    broker) in a throw-away vhost of its own, and stops everything when done.

    Not the script itself: its first step installs the ``demo`` extra into ``.venv``, the very
    environment running these tests, and an installer that syncs to a lock file would take the
    test tools out of it mid-run. ``bin/test`` runs the same ``ensure_venv``."""
    env = _fresh_terminal(Path.home(), AMQP_BASE)
    done = subprocess.run([sys.executable, "-m", "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "All deliveries verified." in output, output
    assert "Stopped: audit exit 0, signer exit 0, deliverer exit 0, ingest exit 0" in output, output
