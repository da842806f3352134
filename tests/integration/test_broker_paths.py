"""The broker path taken at connect, on the real broker: the setting, the environment, and
the version check that falls back to aio-pika's public API (with a warning) on library versions
the fast path was not tested with. aiormq's class attributes are read (public names) to see
which path's values a new connection gets."""

from __future__ import annotations

import subprocess
import sys

import aiormq
import pytest
from structlog.testing import capture_logs

from shared.broker import adapter, connect
from tests.integration.conftest import is_fast

pytestmark = pytest.mark.integration

AIORMQ_DEFAULTS = (10, 3)  # aiormq's FRAME_BUFFER_SIZE, HEARTBEAT_GRACE_MULTIPLIER


def aiormq_tuning() -> tuple[int, int]:
    return (aiormq.Connection.FRAME_BUFFER_SIZE, aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER)


async def test_the_fast_path_tunes_aiormq_and_a_later_plain_connection_untunes_it(
        amqp_url: str) -> None:
    fast = await connect(amqp_url, service="test-paths", fast_path=True)
    try:
        assert is_fast(fast)
        assert aiormq_tuning() == (1024, 2)
        with capture_logs() as logs:
            plain = await connect(amqp_url, service="test-paths", fast_path=False)
        try:
            assert not is_fast(plain)
            assert aiormq_tuning() == AIORMQ_DEFAULTS
            assert {"event": "amqp_path", "path": "plain", "reason": "setting",
                    "log_level": "info"} in logs
            channel = await plain.channel()  # it works as a connection at all
            await channel.close()
        finally:
            await plain.close()
    finally:
        await fast.close()


async def test_untested_library_versions_take_the_plain_path_with_a_warning(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "installed_versions",
                        lambda: {"aio-pika": "10.3.0", "aiormq": "7.2.4"})
    with capture_logs() as logs:
        connection = await connect(amqp_url, service="test-paths", fast_path=True)
    try:
        assert not is_fast(connection)
        warning = next(e for e in logs if e["event"] == "amqp_fast_path_untested")
        print(f"[paths] {warning}")
        assert warning["log_level"] == "warning"
        assert warning["untested"] == ["aio-pika 10.3.0"]
        assert warning["path"] == "plain"
        assert {"event": "amqp_path", "path": "plain", "reason": "untested_versions",
                "log_level": "info"} in logs
    finally:
        await connection.close()


@pytest.mark.parametrize(("env", "fast"), [("false", False), ("0", False), ("true", True)])
async def test_without_an_argument_the_environment_decides(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, env: str, fast: bool) -> None:
    monkeypatch.setenv("DIHYA_AMQP_FAST_PATH", env)
    connection = await connect(amqp_url, service="test-paths")
    try:
        assert is_fast(connection) == fast
    finally:
        await connection.close()


def test_the_plain_path_never_imports_the_fast_path_module() -> None:
    """With versions the fast path was not tested with, its module (which may fail to import
    on them) is not imported by ``import shared.broker``: only a fast connect brings it in."""
    code = ("import sys, shared.broker, shared.broker.adapter; "
            "assert 'shared.broker.fastpath' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
