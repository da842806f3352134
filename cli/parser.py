"""argparse, speaking the user's language through its own gettext hooks.

argparse words its texts (``usage:``, section titles, ``-h``, its error messages) through
:func:`gettext.gettext` and :func:`gettext.ngettext`, that is in gettext's *current* domain and
the language named by ``LANGUAGE``/``LC_ALL``/``LC_MESSAGES``/``LANG`` (not in an ``argparse``
domain of its own). :func:`argparse_language` therefore points gettext, for the time the parser
is built and used, at this package's catalog of argparse's messages
(``cli/locales/gettext/<lang>/LC_MESSAGES/dihya-argparse.po``, compiled to ``.mo``) and the
chosen language, and puts both back afterwards. Only public interfaces are used: no argparse
internals, no parsing of its English. A message argparse adds in a later Python version simply
stays English until the catalog has it.

The switch is process-wide state (gettext's domain, one environment variable), so it is held
under a lock; the CLI builds and runs one parser per invocation. English needs no catalog.
"""

from __future__ import annotations

import argparse
import contextlib
import gettext
import os
import shutil
import sys
import textwrap
import threading
from collections.abc import Iterator
from importlib import resources
from typing import Any, NoReturn

from cli.i18n import Messages

DOMAIN = "dihya-argparse"
LOCALE_DIR = str(resources.files("cli.locales").joinpath("gettext"))
_LOCK = threading.RLock()


@contextlib.contextmanager
def argparse_language(lang: str) -> Iterator[None]:
    """argparse's own messages in ``lang`` within the block (see the module docstring)."""
    if lang == "en":
        yield
        return
    with _LOCK:
        domain = gettext.textdomain()
        language = os.environ.get("LANGUAGE")
        gettext.bindtextdomain(DOMAIN, LOCALE_DIR)
        gettext.textdomain(DOMAIN)
        os.environ["LANGUAGE"] = lang
        try:
            yield
        finally:
            gettext.textdomain(domain)
            if language is None:
                os.environ.pop("LANGUAGE", None)
            else:
                os.environ["LANGUAGE"] = language


def fill(text: str, width: int | None = None) -> str:
    """``text`` wrapped line by line (its own line breaks kept), for descriptions and epilogs
    printed as they are (:class:`argparse.RawDescriptionHelpFormatter`)."""
    width = width or max(shutil.get_terminal_size().columns - 2, 40)
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ") if line.strip() else ""
                     for line in text.splitlines())


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (pre-wrapped by :func:`fill`), a wider option
    column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors end with a hint to ``--help`` (exit status 2)."""

    def __init__(self, *args: Any, messages: Messages, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", Formatter)
        for key in ("description", "epilog"):
            if kwargs.get(key):
                kwargs[key] = fill(kwargs[key])
        super().__init__(*args, **kwargs)
        self.messages = messages

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        text = gettext.gettext("%(prog)s: error: %(message)s\n") % {
            "prog": self.prog, "message": message}
        self.exit(2, text + self.messages("usage.see_help", prog=self.prog) + "\n")
