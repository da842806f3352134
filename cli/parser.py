"""argparse, speaking the user's language.

argparse words its own texts (``usage:``, section titles, ``-h``, its error messages) in
English through gettext, with no French, Arabic or Tamazight catalog to find. Rather than
patching the module globally, :class:`Parser` replaces each of them: section titles and ``-h``
at construction, the usage prefix through its formatter, and the common error messages by
pattern in :meth:`Parser.error` (an uncommon one keeps argparse's English detail after a
translated lead-in). Errors exit with status 2 (usage), as argparse always did.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterable
from typing import Any, NoReturn

from cli.i18n import Messages

_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^the following arguments are required: (?P<names>.+)$"), "usage.required"),
    (re.compile(r"^unrecognized arguments: (?P<names>.+)$"), "usage.unrecognized"),
    (re.compile(r"^argument (?P<name>.+?): invalid choice: (?P<value>.+?) "
                r"\(choose from (?P<choices>.+)\)$"), "usage.invalid_choice"),
    (re.compile(r"^argument (?P<name>.+?): expected one argument$"), "usage.expected_one"),
    (re.compile(r"^argument (?P<name>.+?): not allowed with argument (?P<other>.+)$"),
     "usage.not_allowed_with"),
    (re.compile(r"^one of the arguments (?P<names>.+) is required$"), "usage.one_required"),
    (re.compile(r"^argument (?P<name>.+?): (?P<detail>.+)$"), "usage.argument"),
)


def translate_error(message: str, t: Messages) -> str:
    """argparse's English error message in the user's language (best effort)."""
    for pattern, key in _ERRORS:
        match = pattern.match(message)
        if match:
            return t(key, **match.groupdict())
    return t("usage.other", detail=message)


class Formatter(argparse.HelpFormatter):
    """Help formatting with a translated ``usage:`` prefix; descriptions and epilogs keep
    their line breaks (each line is wrapped on its own)."""

    def __init__(self, prog: str, prefix: str) -> None:
        super().__init__(prog, max_help_position=32)
        self._prefix = prefix

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "  ")
            if line.strip() else "" for line in text.splitlines())

    def add_usage(self, usage: str | None, actions: Iterable[argparse.Action],
                  groups: Iterable[argparse._MutuallyExclusiveGroup],
                  prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, prefix if prefix is not None else self._prefix)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose own words come from the message catalog."""

    def __init__(self, *args: Any, messages: Messages, **kwargs: Any) -> None:
        kwargs.setdefault("add_help", False)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.messages = messages
        self._positionals.title = messages("argparse.positionals")
        self._optionals.title = messages("argparse.options")
        self.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS,
                          help=messages("argparse.help"))

    def _get_formatter(self) -> argparse.HelpFormatter:
        return Formatter(self.prog, self.messages("argparse.usage"))

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        text = translate_error(message, self.messages)
        hint = self.messages("usage.see_help", prog=self.prog)
        self.exit(2, f"{self.prog}: {self.messages('usage.error')}: {text}\n{hint}\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (file or sys.stdout).write(message)
