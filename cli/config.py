"""Where the CLI finds the APIs and its token: flags, then environment, then a config file.

The config file (``$DIHYA_CONFIG``, else ``$XDG_CONFIG_HOME/dihya/config.toml``, else
``~/.config/dihya/config.toml``) holds named profiles, so one person can switch between a
laptop and production with ``--profile``::

    default_profile = "local"

    [profiles.local]
    ingest_url = "http://127.0.0.1:8080"
    audit_url = "http://127.0.0.1:8083"
    token = "dihya_…"
    lang = "fr"
    tzm_script = "tifinagh"   # Tamazight in Tifinagh rather than Latin script

The profile is ``--profile``, else ``DIHYA_PROFILE``, else ``default_profile``, else
``default``. A profile named explicitly must exist; the implicit ``default`` may be absent
(then only flags, environment and built-in defaults count). A token in the file is a password:
the CLI warns when the file is readable by other users.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cli.errors import UsageError
from cli.i18n import Messages

DEFAULT_INGEST_URL = "http://127.0.0.1:8080"
DEFAULT_AUDIT_URL = "http://127.0.0.1:8083"
DEFAULT_TIMEOUT = 30.0
PROFILE_KEYS = ("ingest_url", "audit_url", "token", "lang", "tzm_script", "timeout")


def config_path(env: Mapping[str, str]) -> Path:
    """The config file this environment points at (it may not exist)."""
    if env.get("DIHYA_CONFIG"):
        return Path(env["DIHYA_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else (
        Path(env.get("HOME") or Path.home()) / ".config")
    return base / "dihya" / "config.toml"


@dataclass(frozen=True)
class Profile:
    """The values one profile of the config file gives (all optional)."""

    name: str | None = None
    path: Path | None = None
    values: Mapping[str, str | float] = field(default_factory=dict)
    loose_permissions: bool = False
    """The file holds a token and others may read it."""

    def get(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value is None else str(value)


def read_profile(path: Path, wanted: str | None, t: Messages) -> Profile:
    """Read profile ``wanted`` (None: the file's default) from ``path``.

    Raises :class:`UsageError` for an unreadable file, bad TOML, a profile named explicitly
    that does not exist, or an unknown key (a typo would otherwise be silently ignored)."""
    if not path.is_file():
        if wanted is not None and wanted != "default":
            raise UsageError(t("config.no_file", path=path, profile=wanted))
        return Profile(path=path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(t("config.unreadable", path=path, error=exc)) from None
    profiles = data.get("profiles", {})
    default = data.get("default_profile")
    if not isinstance(profiles, dict) or (default is not None and not isinstance(default, str)):
        raise UsageError(t("config.unreadable", path=path, error="[profiles] / default_profile"))
    name = wanted or default or "default"
    if name not in profiles:
        if wanted is not None or default is not None:
            raise UsageError(t("config.no_profile", path=path, profile=name,
                               known=", ".join(sorted(profiles)) or "-"))
        return Profile(path=path)
    section = profiles[name]
    if not isinstance(section, dict):
        raise UsageError(t("config.unreadable", path=path, error=f"profiles.{name}"))
    unknown = sorted(set(section) - set(PROFILE_KEYS))
    if unknown:
        raise UsageError(t("config.unknown_keys", path=path, profile=name,
                           keys=", ".join(unknown), known=", ".join(PROFILE_KEYS)))
    values: dict[str, str | float] = {}
    for key, value in section.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise UsageError(t("config.unreadable", path=path, error=f"profiles.{name}.{key}"))
        values[key] = value
    loose = False
    if "token" in values and os.name == "posix":
        try:
            loose = bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
        except OSError:
            loose = False
    return Profile(name=name, path=path, values=values, loose_permissions=loose)


def check_url(value: str, option: str, t: Messages) -> str:
    """An API base URL without its trailing slash; :class:`UsageError` if it is not one."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(t("config.bad_url", option=option, value=value))
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    """What the commands need to reach the APIs, resolved once per invocation."""

    ingest_url: str
    audit_url: str
    token: str | None
    token_source: str
    """Where the token came from: ``--token``, ``DIHYA_TOKEN``, the config file path, or ``""``."""
    timeout: float
    config: Path


def resolve(*, ingest_url: str | None, audit_url: str | None, token: str | None,
            timeout: float | None, env: Mapping[str, str], profile: Profile,
            t: Messages) -> Settings:
    """Flags win over the environment, which wins over the profile, then the defaults."""
    ingest = ingest_url or env.get("DIHYA_INGEST_URL") or profile.get("ingest_url") \
        or DEFAULT_INGEST_URL
    audit = audit_url or env.get("DIHYA_AUDIT_URL") or profile.get("audit_url") \
        or DEFAULT_AUDIT_URL
    chosen: str | None
    if token:
        chosen, source = token, "--token"
    elif env.get("DIHYA_TOKEN"):
        chosen, source = env["DIHYA_TOKEN"], "DIHYA_TOKEN"
    elif profile.get("token"):
        chosen, source = profile.get("token"), str(profile.path)
    else:
        chosen, source = None, ""
    seconds = timeout
    if seconds is None:
        raw = env.get("DIHYA_TIMEOUT") or profile.get("timeout")
        try:
            seconds = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:
            raise UsageError(t("config.bad_timeout", value=raw)) from None
    if not seconds > 0:
        raise UsageError(t("config.bad_timeout", value=seconds))
    return Settings(
        ingest_url=check_url(ingest, "--ingest-url / DIHYA_INGEST_URL", t),
        audit_url=check_url(audit, "--audit-url / DIHYA_AUDIT_URL", t),
        token=chosen.strip() if chosen else None, token_source=source, timeout=seconds,
        config=profile.path or Path("~/.config/dihya/config.toml"))
