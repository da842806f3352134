"""``dihya run <service>`` (one service, in the foreground) and ``dihya dev`` (all four, for
development, until Ctrl-C)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cli.commands import Commands
from cli.context import Ctx
from cli.errors import CliError, Exit, UsageError

SERVICES = ("ingest", "signer", "deliverer", "audit")
DEV_PORTS = {"ingest": 8080, "signer": 8081, "deliverer": 8082, "audit": 8083}
"""The services' own default ports, so the CLI's default URLs reach a ``dihya dev``."""
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
CLI_VARS = frozenset({
    "DIHYA_TOKEN", "DIHYA_INGEST_URL", "DIHYA_AUDIT_URL", "DIHYA_LANG", "DIHYA_PROFILE",
    "DIHYA_CONFIG", "DIHYA_TIMEOUT", "DIHYA_AMQP_URL", "DIHYA_ADMIN_TOKEN",
    *(f"DIHYA_{name.upper()}_PORT" for name in SERVICES),
})
"""Variables ``dihya dev`` does not pass on to the services: the CLI's own, and those it
sets itself (broker URL, admin token, ports)."""

execv: Callable[[str, list[str]], Any] = os.execv
"""Replaced by the unit tests, which check what ``run`` would execute."""


def register(root: Commands) -> None:
    t = root.t
    p = root.command("run", "help.run", run)
    p.add_argument("service", choices=SERVICES, help=t("help.arg.service"))

    p = root.command("dev", "help.dev", dev)
    p.add_argument("--data-dir", default="data/dev", metavar="DIR", help=t("help.arg.data_dir"))
    p.add_argument("--amqp-url", metavar="URL", help=t("help.arg.amqp_url"))
    p.add_argument("--free-ports", action="store_true", help=t("help.arg.free_ports"))


def run(ctx: Ctx, args: argparse.Namespace) -> int:
    """Replace this process with ``python -m services.<name>``: signals (SIGTERM from a
    supervisor, Ctrl-C) then reach the service itself, which shuts down gracefully."""
    ctx.out.flush()
    ctx.err.flush()
    execv(sys.executable, [sys.executable, "-m", f"services.{args.service}"])
    return Exit.OK  # only reached when execv is replaced (tests)


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def port_free(port: int) -> bool:
    """Whether a service could listen on ``port``: bound as servers bind (SO_REUSEADDR), so the
    connections a previous ``dihya dev`` closed, still in TIME_WAIT for a minute, do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def master_key(data_dir: Path) -> str:
    """The signer's keystore key for this data directory, created once (mode 0600): the
    secrets stored by a previous ``dihya dev`` stay readable."""
    path = data_dir / "master.key"
    if path.exists():
        return path.read_text().strip()
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def prepare(data: Path, env: dict[str, str]) -> dict[str, str]:
    """Create the data directory; give the signer this directory's master key unless the
    environment names one."""
    data.mkdir(parents=True, exist_ok=True)
    if "DIHYA_SIGNER_MASTER_KEY" not in env:
        env["DIHYA_SIGNER_MASTER_KEY"] = master_key(data)
    return env


def passthrough(env: Mapping[str, str]) -> dict[str, str]:
    """The service settings (``DIHYA_*``) of the caller's environment, for the services."""
    return {k: v for k, v in env.items() if k.startswith("DIHYA_") and k not in CLI_VARS}


async def broker_reachable(url: str) -> bool:
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return False
    await connection.close()
    return True


def dev(ctx: Ctx, args: argparse.Namespace) -> int:
    return asyncio.run(_dev(ctx, args, Path(args.data_dir).expanduser().resolve()))


async def _dev(ctx: Ctx, args: argparse.Namespace, data: Path) -> int:
    from launcher.processes import System

    t = ctx.t
    amqp = args.amqp_url or ctx.env.get("DIHYA_AMQP_URL") or DEFAULT_AMQP_URL
    if not args.free_ports:
        for name, port in DEV_PORTS.items():
            if not port_free(port):
                raise UsageError(t("dev.port_busy", port=port, service=name))
    if not await broker_reachable(amqp):
        raise CliError(t("dev.no_broker", url=redact(amqp)), Exit.UNAVAILABLE)
    env = await asyncio.to_thread(prepare, data, passthrough(ctx.env))
    given = ctx.env.get("DIHYA_ADMIN_TOKEN")
    system = System(amqp, data, env=env, admin_token=given) if given else \
        System(amqp, data, env=env)
    if not args.free_ports:
        system.replica_ports = {name: [port] for name, port in DEV_PORTS.items()}
        system.ports = dict(DEV_PORTS)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    ctx.say(t("dev.starting", dir=data, broker=redact(amqp)))
    try:
        await system.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        await system.stop()
        raise CliError(t("dev.start_failed", error=exc, dir=data), Exit.UNAVAILABLE) from None
    _announce(ctx, system, data, given is not None)

    crashed: list[str] = []
    while not stop.is_set():
        exited = {n: p.poll() for n, p in system.procs.items() if p.poll() is not None}
        if exited:
            crashed = [n for n, code in exited.items() if code != 0]
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    if crashed:
        ctx.note(t("dev.crashed", services=", ".join(crashed),
                   logs=", ".join(str(system.log_path(n)) for n in crashed)))
    ctx.say(t("dev.stopping"))
    codes = await system.stop()
    ctx.say(t("dev.stopped", codes=", ".join(f"{n} {c}" for n, c in codes.items())))
    return Exit.UNAVAILABLE if crashed else Exit.OK


def _announce(ctx: Ctx, system: Any, data: Path, given: bool) -> None:
    t = ctx.t
    ctx.say(t("dev.ready", dir=data))
    roles = {"ingest": t("dev.role_api"), "audit": t("dev.role_api")}
    for name in SERVICES:
        ctx.say(f"  {name:<10} {system.url(name):<24} {roles.get(name, t('dev.role_ops'))}")
    ctx.say(f"  {'console':<10} {system.console_url():<24} {t('dev.role_console')}")
    token = "$DIHYA_ADMIN_TOKEN" if given else system.admin_token
    ctx.say(t("dev.token_given") if given else t("dev.token_generated", token=token))
    ctx.say(t("dev.export_hint"))
    ctx.say(f"  export DIHYA_INGEST_URL={system.url('ingest')} "
            f"DIHYA_AUDIT_URL={system.url('audit')} DIHYA_TOKEN={token}")
    ctx.say(t("dev.ctrl_c"))
