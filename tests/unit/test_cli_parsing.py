"""Argument parsing, value conversions and configuration of the CLI (no API involved)."""

from __future__ import annotations

import argparse
import gettext
import io
import os
import re
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from cli.commands import services
from cli.config import (
    DEFAULT_AUDIT_URL,
    DEFAULT_INGEST_URL,
    Profile,
    config_path,
    read_profile,
    resolve,
)
from cli.errors import Exit, UsageError
from cli.i18n import Messages
from cli.main import build_parser, prescan_lang, run
from cli.values import iso_utc, parse_schedule, parse_when, schedule_text

ROOT = Path(__file__).resolve().parents[2]
EN = Messages("en")
NOW = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)


def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), env={"HOME": "/nonexistent", **(env or {})}, stdout=out,
               stderr=err, stdin=io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


# -- parsing ------------------------------------------------------------------------------

def test_create_collects_repeated_events_and_converts_the_schedule() -> None:
    args = build_parser(EN).parse_args(
        ["endpoints", "create", "https://h.example/x", "-e", "a.b", "--event", "c.*",
         "--retry-schedule", "10s,1m,1.5h", "--description", "d"])
    assert args.url == "https://h.example/x"
    assert args.events == ["a.b", "c.*"]
    assert args.retry_schedule == [10, 60, 5400]
    assert args.description == "d"


@pytest.mark.parametrize("position", ["before", "after"])
def test_global_options_go_before_or_after_the_command(position: str) -> None:
    opts = ["--json", "--token", "tok", "--ingest-url", "http://h:1", "--lang", "fr"]
    argv = [*opts, "tokens", "list"] if position == "before" else ["tokens", "list", *opts]
    args = build_parser(EN).parse_args(argv)
    assert (args.json, args.token, args.ingest_url, args.lang) == (True, "tok", "http://h:1",
                                                                   "fr")


def test_global_options_default_when_absent() -> None:
    args = build_parser(EN).parse_args(["tokens", "list"])
    assert (args.json, args.token, args.ingest_url, args.timeout) == (False, None, None, None)


def test_update_distinguishes_no_schedule_from_the_default_schedule() -> None:
    parser = build_parser(EN)
    assert "retry_schedule" not in parser.parse_args(["endpoints", "update", "ep_1",
                                                      "--enable"])
    args = parser.parse_args(["endpoints", "update", "ep_1", "--retry-schedule", "default"])
    assert args.retry_schedule is None
    args = parser.parse_args(["endpoints", "update", "ep_1", "--retry-schedule", "none"])
    assert args.retry_schedule == []


def test_enable_and_disable_exclude_each_other() -> None:
    code, _, err = cli("endpoints", "update", "ep_1", "--enable", "--disable")
    assert code == Exit.USAGE
    assert "not allowed with argument --enable" in err


def test_abbreviated_options_are_refused() -> None:
    """A script relying on `--desc` would break the day another option starts alike."""
    code, _, _ = cli("endpoints", "create", "https://h", "-e", "a", "--desc", "x")
    assert code == Exit.USAGE


@pytest.mark.parametrize(
    ("lang", "expected"),
    [("en", "the following arguments are required"), ("fr", "arguments obligatoires manquants"),
     ("ar", "معطيات إلزامية ناقصة"), ("tzm", "ttwasran iɣewwaren-a")],
)
def test_usage_errors_speak_the_chosen_language(lang: str, expected: str) -> None:
    code, out, err = cli("--lang", lang, "endpoints", "create")
    assert code == Exit.USAGE
    assert expected in err
    assert "--help" in err
    assert out == ""


def test_a_bad_time_says_what_is_expected() -> None:
    code, _, err = cli("--lang", "fr", "deliveries", "recover", "ep_1", "--since", "hier")
    assert code == Exit.USAGE
    assert "'hier' n'est pas valide" in err and "ISO-8601" in err


def test_an_unknown_command_lists_the_choices() -> None:
    code, _, err = cli("endpoint", "list")
    assert code == Exit.USAGE
    assert "endpoints" in err and "invalid choice: 'endpoint'" in err


def test_help_is_translated_and_exits_0() -> None:
    code, out, _ = cli("--lang", "ar", "endpoints", "test", "--help")
    assert code == Exit.OK
    assert out.startswith("الاستخدام: dihya endpoints test")
    assert "خيارات عامة" in out


def test_a_group_without_a_command_shows_its_help() -> None:
    code, _, err = cli("audit")
    assert code == Exit.USAGE
    assert "export" in err and "verify" in err


def test_the_language_comes_from_the_environment() -> None:
    code, _, err = cli("tokens", "create", env={"LANG": "fr_FR.UTF-8"})
    assert code == Exit.USAGE and "arguments obligatoires manquants" in err
    code, _, err = cli("tokens", "create", env={"LANG": "fr_FR.UTF-8", "DIHYA_LANG": "tzm"})
    assert code == Exit.USAGE and "ttwasran iɣewwaren-a" in err
    code, _, err = cli("tokens", "create", env={"DIHYA_LANG": "tzm",
                                                "DIHYA_TZM_SCRIPT": "tifinagh"})
    assert code == Exit.USAGE and "ⵉⵇⵇⴰⵏ" in err


def test_prescan_lang() -> None:
    assert prescan_lang(["--lang", "ar", "x"]) == "ar"
    assert prescan_lang(["x", "--lang=tzm"]) == "tzm"
    assert prescan_lang(["--", "--lang", "ar"]) is None
    assert prescan_lang(["--lang"]) is None


@pytest.mark.parametrize(
    ("lang", "expected"),
    [("fr", "dihya tokens create : erreur : argument --role : 'x' n'est pas un choix valide"),
     ("ar", "dihya tokens create: خطأ: المعطى --role: القيمة 'x' ليست اختيارًا صالحًا"),
     ("tzm", "dihya tokens create: tuccḍa: aɣewwar --role: 'x' mačči d afran ameɣtu"),
     ("en", "dihya tokens create: error: argument --role: invalid choice: 'x'")],
)
def test_argparse_speaks_through_its_gettext_hooks(lang: str, expected: str) -> None:
    """argparse's own messages come from the catalog gettext finds, not from rewording its
    English; the switch leaves gettext's domain and the environment as they were."""
    before = (gettext.textdomain(), os.environ.get("LANGUAGE"))
    code, _, err = cli("--lang", lang, "tokens", "create", "--role", "x")
    assert code == Exit.USAGE
    assert expected in err
    code, _, err = cli("--lang", lang, "tokens", "create", "--role", "admin", "--bogus")
    assert code == Exit.USAGE and "--bogus" in err and ("unrecognized" in err) == (lang == "en")
    assert (gettext.textdomain(), os.environ.get("LANGUAGE")) == before


@pytest.mark.parametrize("lang", ["fr", "ar", "tzm", "tzm@tifinagh"])
def test_every_argparse_message_is_translated(lang: str) -> None:
    """The catalog covers what this Python's argparse says to users (its internal errors for
    programmers excepted), and its compiled .mo is the .po's current content."""
    base = ROOT / "cli" / "locales" / "gettext" / lang / "LC_MESSAGES" / "dihya-argparse"
    with base.with_suffix(".mo").open("rb") as fh:
        compiled = gettext.GNUTranslations(fh)
    source = read_po(base.with_suffix(".po").read_text(encoding="utf-8"))
    for key, text in source.items():
        if isinstance(key, tuple):
            msgid, form = key
            assert compiled.ngettext(msgid, msgid + "s", 1 if form == 0 else 5) == text
        else:
            assert compiled.gettext(key) == text, f"{base}.mo is stale: run msgfmt"
    said = set(re.findall(r"_\('((?:[^'\\]|\\.)*)'\)", ARGPARSE_SOURCE))
    said.add("show program's version number and exit")
    for_programmers = {m for m in said if any(w in m for w in (
        "conflicting", "invalid conflict", "cannot merge", "dest=", "required' is",
        "mutually exclusive", "cannot have multiple", "not callable", "__call__",
        "unknown parser", 'argument "-"'))}
    missing = sorted(said - for_programmers - {k for k in source if isinstance(k, str)})
    assert not missing


ARGPARSE_SOURCE = Path(argparse.__file__).read_text(encoding="utf-8").replace("\\n", "\n")


def read_po(text: str) -> dict[str | tuple[str, int], str]:
    """A small reader for the catalogs' own .po layout (single-line strings)."""
    out: dict[str | tuple[str, int], str] = {}
    msgid = None
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key not in ("msgid", "msgstr") and not key.startswith("msgstr["):
            continue
        value = orjson.loads(rest)
        if key == "msgid":
            msgid = value
        elif key == "msgstr" and msgid:
            out[msgid] = value
        elif key.startswith("msgstr[") and msgid:
            out[(msgid, int(key[7:-1]))] = value
    return out


def test_version() -> None:
    code, out, _ = cli("--version")
    assert code == Exit.OK and out.startswith("dihya ")


# -- values --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", NOW - timedelta(minutes=30)), ("2h", NOW - timedelta(hours=2)),
     ("7d", NOW - timedelta(days=7)), ("1w", NOW - timedelta(days=7)),
     ("90s", NOW - timedelta(seconds=90)), ("1.5h", NOW - timedelta(minutes=90)),
     ("2025-05-20T10:00:00Z", datetime(2025, 5, 20, 10, tzinfo=UTC)),
     ("2025-05-20T10:00:00", datetime(2025, 5, 20, 10, tzinfo=UTC)),
     ("2025-05-20", datetime(2025, 5, 20, tzinfo=UTC)),
     ("2025-05-20T12:00:00+02:00", datetime(2025, 5, 20, 10, tzinfo=UTC))],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "-2h", "2 hours", "2025-13-01"])
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_when(text, NOW)


def test_iso_utc() -> None:
    offset = datetime.fromisoformat("2025-05-20T12:00:00+02:00")
    assert iso_utc(offset) == "2025-05-20T10:00:00Z"
    assert iso_utc(datetime(2025, 5, 20, 10, 0, 0, 5, tzinfo=UTC)) == \
        "2025-05-20T10:00:00.000005Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10,60,600", [10, 60, 600]), ("10s, 1m ,1h", [10, 60, 3600]), ("1500ms", [1.5]),
     ("none", []), ("NONE", []), ("default", None), ("2.5", [2.5])],
)
def test_parse_schedule(text: str, expected: list[float] | None) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize("text", ["10x", "1m,,2m", "fast", "-5"])
def test_parse_schedule_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="10s,1m,10m"):
        parse_schedule(text)


def test_schedule_text() -> None:
    assert schedule_text([10, 60, 5400, 7200, 1.5]) == "10s, 1m, 90m, 2h, 1.5s"
    assert schedule_text([]) == "-"
    assert schedule_text(None) is None


# -- configuration -------------------------------------------------------------------------

def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


CONFIG = """
default_profile = "local"
[profiles.local]
ingest_url = "http://127.0.0.1:9080"
token = "tok-local"
lang = "fr"
[profiles.prod]
ingest_url = "https://ingest.example"
audit_url = "https://audit.example"
token = "tok-prod"
timeout = 5
"""


def test_config_path_follows_the_environment(tmp_path: Path) -> None:
    assert config_path({"DIHYA_CONFIG": "/x/c.toml"}) == Path("/x/c.toml")
    assert config_path({"XDG_CONFIG_HOME": "/xdg", "HOME": "/h"}) == \
        Path("/xdg/dihya/config.toml")
    assert config_path({"HOME": "/h"}) == Path("/h/.config/dihya/config.toml")


def test_profiles(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", CONFIG)
    assert read_profile(path, None, EN).get("token") == "tok-local"
    prod = read_profile(path, "prod", EN)
    assert (prod.name, prod.get("audit_url"), prod.get("timeout")) == \
        ("prod", "https://audit.example", "5")
    assert not prod.loose_permissions
    with pytest.raises(UsageError, match=r"No profile 'staging'.*local, prod"):
        read_profile(path, "staging", EN)


def test_a_missing_file_is_fine_unless_a_profile_is_asked_for(tmp_path: Path) -> None:
    assert read_profile(tmp_path / "none.toml", None, EN).values == {}
    with pytest.raises(UsageError, match="no config file"):
        read_profile(tmp_path / "none.toml", "prod", EN)


@pytest.mark.parametrize(
    ("text", "match"),
    [("[profiles.default]\ntokn = 'x'\n", "Unknown keys.*tokn"),
     ("this is not toml", "Cannot read the config file"),
     ("[profiles.default]\ntoken = true\n", "Cannot read the config file")],
)
def test_a_bad_config_file_is_a_usage_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        read_profile(_write(tmp_path / "c.toml", text), None, EN)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_token_readable_by_others_is_flagged(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", CONFIG, stat.S_IRUSR | stat.S_IWUSR | stat.S_IROTH)
    assert read_profile(path, None, EN).loose_permissions
    code, _, err = cli("--config", str(path), "--ingest-url", "http://127.0.0.1:9",
                       "tokens", "list")
    assert "chmod 600" in err
    assert code == Exit.UNAVAILABLE


def test_flags_win_over_environment_over_profile() -> None:
    profile = Profile(values={"ingest_url": "http://p:1", "audit_url": "http://p:2",
                              "token": "ptok", "timeout": 7})
    env = {"DIHYA_INGEST_URL": "http://e:1/", "DIHYA_TOKEN": "etok"}
    s = resolve(ingest_url=None, audit_url=None, token=None, timeout=None, env=env,
                profile=profile, t=EN)
    assert (s.ingest_url, s.audit_url, s.token, s.token_source, s.timeout) == \
        ("http://e:1", "http://p:2", "etok", "DIHYA_TOKEN", 7.0)
    s = resolve(ingest_url="http://f:1", audit_url=None, token=" ftok ", timeout=2.0,
                env=env, profile=profile, t=EN)
    assert (s.ingest_url, s.token, s.token_source, s.timeout) == \
        ("http://f:1", "ftok", "--token", 2.0)
    s = resolve(ingest_url=None, audit_url=None, token=None, timeout=None, env={},
                profile=Profile(), t=EN)
    assert (s.ingest_url, s.audit_url, s.token, s.timeout) == \
        (DEFAULT_INGEST_URL, DEFAULT_AUDIT_URL, None, 30.0)


@pytest.mark.parametrize(("url", "timeout"), [("ftp://h", None), ("h:8080", None),
                                              ("http://h", -1.0)])
def test_bad_urls_and_timeouts_are_usage_errors(url: str, timeout: float | None) -> None:
    with pytest.raises(UsageError):
        resolve(ingest_url=url, audit_url=None, token=None, timeout=timeout, env={},
                profile=Profile(), t=EN)


def test_config_errors_exit_2_before_anything_is_sent(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "nope nope")
    code, out, err = cli("--config", str(path), "tokens", "list")
    assert (code, out) == (Exit.USAGE, "")
    assert "Cannot read the config file" in err


def test_the_profile_language_is_used(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", CONFIG)
    code, _, err = cli("--config", str(path), "--ingest-url", "http://127.0.0.1:9",
                       "tokens", "list")
    assert code == Exit.UNAVAILABLE
    assert "Impossible de joindre l'API ingest" in err


# -- run -----------------------------------------------------------------------------------

def test_run_executes_the_service_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(services, "execv", lambda path, argv: calls.append((path, argv)))
    code, _, _ = cli("run", "deliverer")
    assert code == Exit.OK
    assert calls == [(sys.executable, [sys.executable, "-m", "services.deliverer"])]


def test_run_refuses_an_unknown_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "execv", lambda *_: pytest.fail("must not exec"))
    code, _, err = cli("run", "web")
    assert code == Exit.USAGE and "ingest" in err


def test_dev_passes_service_settings_but_not_the_clis_own() -> None:
    env = {"DIHYA_TOKEN": "t", "DIHYA_INGEST_URL": "u", "DIHYA_INGEST_PORT": "1",
           "DIHYA_DELIVERER_RETRY_SCHEDULE": "1s", "DIHYA_AUDIT_DATABASE_URL": "sqlite:///x",
           "PATH": "/bin"}
    assert services.passthrough(env) == {"DIHYA_DELIVERER_RETRY_SCHEDULE": "1s",
                                         "DIHYA_AUDIT_DATABASE_URL": "sqlite:///x"}
    assert services.redact("amqp://u:pw@h:5672/v") == "amqp://u:***@h:5672/v"
    assert services.redact("amqp://h/") == "amqp://h/"


def test_dev_keeps_one_master_key_per_data_directory(tmp_path: Path) -> None:
    first = services.prepare(tmp_path / "dev", {})["DIHYA_SIGNER_MASTER_KEY"]
    again = services.prepare(tmp_path / "dev", {})["DIHYA_SIGNER_MASTER_KEY"]
    assert first == again
    assert stat.S_IMODE((tmp_path / "dev" / "master.key").stat().st_mode) == 0o600
    given = services.prepare(tmp_path / "dev", {"DIHYA_SIGNER_MASTER_KEY": "mine"})
    assert given["DIHYA_SIGNER_MASTER_KEY"] == "mine"
