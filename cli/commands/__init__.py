"""The command tree: each module registers its group (``endpoints``, ``events``…) here.

A handler is ``handler(ctx, args) -> int`` (the exit code). It raises
:class:`~cli.errors.ApiError`, :class:`~cli.errors.UnreachableError` or
:class:`~cli.errors.CliError` instead of printing failures itself, so that every failure is
worded and coded in one place (:mod:`cli.main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cli.context import Ctx
from cli.errors import UsageError
from cli.i18n import Messages
from cli.parser import Parser

Handler = Callable[[Ctx, argparse.Namespace], int]


@dataclass
class Commands:
    """A level of subcommands; ``common`` holds the global options every command accepts."""

    t: Messages
    common: argparse.ArgumentParser
    sub: Any  # argparse._SubParsersAction[Parser]: private in typeshed

    def command(self, name: str, help_key: str, handler: Handler | None = None) -> Parser:
        parser: Parser = self.sub.add_parser(
            name, messages=self.t, help=self.t(help_key), description=self.t(help_key),
            parents=[self.common])
        if handler is not None:
            parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_key: str) -> Commands:
        parser = self.command(name, help_key)
        parser.set_defaults(handler=None, group_parser=parser)
        sub = parser.add_subparsers(title=self.t("argparse.commands"), metavar="COMMAND",
                                    parser_class=Parser)
        return Commands(self.t, self.common, sub)


def value(t: Messages, convert: Callable[[str], Any], hint_key: str) -> Callable[[str], Any]:
    """An argparse ``type=`` whose error says, in the user's language, what was expected."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(t("usage.bad_value", value=text,
                                               hint=t(hint_key))) from None

    return parse


def confirm(ctx: Ctx, yes: bool, question: str) -> None:
    """Ask before destroying something; without a terminal, ``--yes`` is required."""
    if yes:
        return
    if not ctx.interactive():
        raise UsageError(ctx.t("confirm.need_yes"))
    ctx.err.write(f"{question} {ctx.t('confirm.suffix')} ")
    ctx.err.flush()
    answer = ctx.stdin.readline().strip().lower()
    accepted = {word.strip() for word in ctx.t("confirm.yes_words").split(",")}
    if answer not in accepted | {"y", "yes"}:
        raise UsageError(ctx.t("confirm.aborted"))
