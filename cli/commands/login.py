"""``dihya login``: check a token against the ingest API and save it in a profile of the
config file, readable by its owner only (mode 0600).

The token comes from ``--token`` or ``DIHYA_TOKEN`` when given, else from a hidden prompt on a
terminal, else from the first line of standard input (``… | dihya login``). The URLs saved are
the ones this invocation uses (``--ingest-url``, ``DIHYA_INGEST_URL``, the defaults); the
profile is ``--profile``, else ``DIHYA_PROFILE``, else ``default``. The file is edited with
tomlkit, so the other profiles, comments and layout a person wrote stay as they were; it is
replaced atomically (a temporary file in the same directory, created 0600, then renamed).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from cli.client import Client
from cli.commands import Commands
from cli.context import Ctx
from cli.errors import ApiError, CliError, Exit, UsageError

PROFILE_VAR = "DIHYA_PROFILE"


def register(root: Commands) -> None:
    t = root.t
    p = root.command("login", "help.login", login)
    p.add_argument("--default", dest="make_default", action="store_true",
                   help=t("help.arg.make_default"))
    p.set_defaults(writes_profile=True)


def read_token(ctx: Ctx) -> str:
    """The token to log in with (see the module docstring)."""
    s = ctx.settings
    if s.token and s.token_source in ("--token", "DIHYA_TOKEN"):
        return s.token
    if ctx.interactive():
        token = getpass.getpass(ctx.t("login.prompt"), stream=ctx.err)
    else:
        token = ctx.stdin.readline()
    token = token.strip()
    if not token:
        raise UsageError(ctx.t("login.no_token"))
    return token


def save_profile(path: Path, name: str, values: dict[str, Any], make_default: bool) -> None:
    """Set profile ``name`` to ``values`` in ``path`` (created if missing), mode 0600."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        doc = tomlkit.parse(text)
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    profiles = doc.get("profiles")
    if profiles is None:
        profiles = tomlkit.table(is_super_table=True)
        doc["profiles"] = profiles
    section = tomlkit.table()
    for key, value in values.items():
        section[key] = value
    profiles[name] = section
    if make_default or "default_profile" not in doc:
        doc["default_profile"] = name  # tomlkit writes a top-level key above the tables
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:  # mkstemp creates it 0600
            fh.write(tomlkit.dumps(doc))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.chmod(path, 0o600)


def login(ctx: Ctx, args: argparse.Namespace) -> int:
    t, s = ctx.t, ctx.settings
    token = read_token(ctx)
    try:
        me = Client("ingest", s.ingest_url, token, s.timeout).get("/v1/me")
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise CliError(t("login.refused", url=s.ingest_url, message=exc.message),
                       Exit.AUTH) from None
    name = args.profile or ctx.env.get(PROFILE_VAR) or "default"
    values: dict[str, Any] = {"ingest_url": s.ingest_url, "audit_url": s.audit_url,
                              "token": token}
    if getattr(args, "lang", None):
        values["lang"] = args.lang
    save_profile(s.config, name, values, args.make_default)
    result = {"profile": name, "path": str(s.config), "token_id": me.get("token_id"),
              "role": me.get("role"), "ingest_url": s.ingest_url, "audit_url": s.audit_url}
    ctx.emit(result, lambda: ctx.say(t("login.saved", url=s.ingest_url,
                                       token_id=me.get("token_id"), role=me.get("role"),
                                       profile=name, path=s.config)))
    return Exit.OK
