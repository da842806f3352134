"""What every command gets: the messages, the output streams, the two API clients."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from cli import output
from cli.client import Client
from cli.config import Settings
from cli.i18n import Messages


@dataclass
class Ctx:
    t: Messages
    settings: Settings
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    env: Mapping[str, str] = field(default_factory=dict)
    json: bool = False

    def ingest(self) -> Client:
        s = self.settings
        return Client("ingest", s.ingest_url, s.token, s.timeout)

    def audit(self) -> Client:
        s = self.settings
        return Client("audit", s.audit_url, s.token, s.timeout)

    def say(self, text: str = "") -> None:
        """A line on stdout (the command's result)."""
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A line on stderr: advice and progress, kept out of what a pipe receives."""
        self.err.write(text + "\n")
        self.err.flush()

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """The API's JSON with ``--json``, else the human rendering."""
        if self.json:
            self.say(output.dumps(data))
        else:
            human()

    def interactive(self) -> bool:
        isatty = getattr(self.stdin, "isatty", None)
        return bool(isatty and isatty())
