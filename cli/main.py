"""Entry point of ``dihya``: parse, resolve settings, run the command, map failures.

Every failure ends here and leaves with a documented exit code (:class:`~cli.errors.Exit`)
and one message on stderr that says what to do next; with ``--json`` the API's own error body
is also printed on stdout, so a script can read its ``error.code``. :func:`run` takes its
streams and environment as arguments so that tests call it in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import argcomplete

from cli import __version__, output
from cli.commands import (
    Commands,
    audit,
    completion,
    deliveries,
    endpoints,
    event_types,
    events,
    listen,
    login,
    services,
    tenants,
    tokens,
)
from cli.config import Profile, Settings, config_path, read_profile, resolve
from cli.context import Ctx
from cli.errors import ApiError, CliError, Exit, UnreachableError
from cli.i18n import LANGS, UNREVIEWED, Messages, choose, normalize, script
from cli.parser import Parser, argparse_language

MODULES = (endpoints, events, event_types, deliveries, listen, audit, tokens, tenants, login,
           services, completion)


def add_globals(parser: argparse.ArgumentParser, t: Messages, *, suppress: bool) -> None:
    """The options every command accepts, before or after its name. On subcommands their
    default is SUPPRESS so that ``dihya --json endpoints list`` keeps the root's value."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g = parser.add_argument_group(t("argparse.globals"))
    g.add_argument("--ingest-url", metavar="URL", help=t("help.opt.ingest_url"), **default)
    g.add_argument("--audit-url", metavar="URL", help=t("help.opt.audit_url"), **default)
    g.add_argument("--token", help=t("help.opt.token"), **default)
    g.add_argument("--profile", help=t("help.opt.profile"), **default)
    g.add_argument("--config", metavar="FILE", help=t("help.opt.config"), **default)
    g.add_argument("--lang", choices=LANGS, help=t("help.opt.lang"), **default)
    g.add_argument("--timeout", type=float, metavar="SECONDS", help=t("help.opt.timeout"),
                   **default)
    g.add_argument("--json", action="store_true", help=t("help.opt.json"), **default)


def build_parser(t: Messages) -> Parser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_globals(common, t, suppress=True)
    epilog = t("help.epilog")
    if t.lang in UNREVIEWED:  # the translation says it is one, in its own words
        epilog += " " + t("help.unreviewed")
    root = Parser(prog="dihya", messages=t, description=t("help.dihya"), epilog=epilog)
    add_globals(root, t, suppress=False)
    root.add_argument("--version", action="version", version=f"dihya {__version__}",
                      help=t("help.version"))
    root.set_defaults(handler=None, group_parser=root)
    sub = root.add_subparsers(title=t("argparse.commands"), metavar="COMMAND",
                              parser_class=Parser)
    commands = Commands(t, common, sub)
    for module in MODULES:
        module.register(commands)
    return root


def prescan_lang(argv: Sequence[str]) -> str | None:
    """``--lang`` before parsing: the parser's own texts need the language already."""
    for index, arg in enumerate(argv):
        if arg == "--":
            return None
        if arg == "--lang" and index + 1 < len(argv):
            return normalize(argv[index + 1])
        if arg.startswith("--lang="):
            return normalize(arg.split("=", 1)[1])
    return None


def explain(t: Messages, exc: ApiError, settings: Settings | None) -> str:
    """What an API error means and what to do about it, in the user's language."""
    if exc.advice:
        return exc.advice
    if exc.status == 401:
        if settings is None or not settings.token:
            path = settings.config if settings else "~/.config/dihya/config.toml"
            return t("auth.no_token", service=exc.service, path=path)
        return t("auth.unauthorized", service=exc.service, message=exc.message,
                 source=settings.token_source)
    if exc.status == 403:
        return t("auth.forbidden", service=exc.service, message=exc.message)
    if exc.status == 404:
        return t("api.not_found", message=exc.message)
    if exc.status == 409:
        return t("api.conflict", message=exc.message)
    if 400 <= exc.status < 500:
        lines = [t("api.invalid", status=exc.status, message=exc.message)]
        lines += [f"  - {f['field']}: {f['message']}" for f in exc.fields]
        return "\n".join(lines)
    if exc.status == 503:
        return t("api.unavailable", service=exc.service, message=exc.message)
    return t("api.server_error", service=exc.service, status=exc.status, message=exc.message)


def explain_unreachable(t: Messages, exc: UnreachableError) -> str:
    if exc.cut:
        return t("net.cut_short", service=exc.service, reason=exc.reason)
    return t("net.unreachable", service=exc.service, url=exc.base_url, reason=exc.reason,
             flag=f"--{exc.service}-url", var=f"DIHYA_{exc.service.upper()}_URL")


def run(argv: Sequence[str], *, env: Mapping[str, str], stdout: TextIO, stderr: TextIO,
        stdin: TextIO | None = None) -> int:
    """Run one ``dihya`` command; returns its exit code (never raises SystemExit)."""
    t = Messages(choose(prescan_lang(argv), env), script(env.get("DIHYA_TZM_SCRIPT")))
    with argparse_language(t.variant):
        parser = build_parser(t)
        if "_ARGCOMPLETE" in env:  # the shell asks for candidates: answer and exit
            argcomplete.autocomplete(parser)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                args = parser.parse_args(list(argv))
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else Exit.USAGE
        if args.handler is None:
            args.group_parser.print_help(stderr)
            return Exit.USAGE

    def fail(message: str) -> None:
        stderr.write(f"dihya: {message}\n")
        stderr.flush()

    settings: Settings | None = None
    ctx: Ctx | None = None
    try:
        config = Path(args.config).expanduser() if args.config else config_path(env)
        if getattr(args, "writes_profile", False) or getattr(args, "offline", False):
            profile = Profile(path=config)  # login makes the profile; completion needs none
        else:
            profile = read_profile(config, args.profile or env.get("DIHYA_PROFILE"), t)
        if profile.get("lang") or profile.get("tzm_script"):
            t = Messages(choose(args.lang, env, profile.get("lang")),
                         script(env.get("DIHYA_TZM_SCRIPT"), profile.get("tzm_script")))
        settings = resolve(ingest_url=args.ingest_url, audit_url=args.audit_url,
                           token=args.token, timeout=args.timeout, env=env, profile=profile,
                           t=t)
        if profile.loose_permissions:
            fail(t("config.loose_permissions", path=config))
        ctx = Ctx(t=t, settings=settings, out=stdout, err=stderr, stdin=stdin or sys.stdin,
                  env=env, json=bool(args.json))
        return int(args.handler(ctx, args))
    except ApiError as exc:
        if ctx is not None and ctx.json and isinstance(exc.body, dict):
            ctx.say(output.dumps(exc.body))
        fail(explain(t, exc, settings))
        return exc.exit
    except UnreachableError as exc:
        fail(explain_unreachable(t, exc))
        return Exit.UNAVAILABLE
    except CliError as exc:
        fail(exc.message)
        return exc.code
    except KeyboardInterrupt:
        fail(t("misc.interrupted"))
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `dihya audit query | head`: the reader has gone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def main(argv: Sequence[str] | None = None) -> None:
    """The ``dihya`` console script."""
    sys.exit(run(sys.argv[1:] if argv is None else argv, env=os.environ,
                 stdout=sys.stdout, stderr=sys.stderr, stdin=sys.stdin))


if __name__ == "__main__":
    main()
