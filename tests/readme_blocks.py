"""The README's command blocks and what CI does with each (``tests/e2e/test_readme.py``).

Every fenced block of README.md follows a marker comment, invisible on GitHub::

    <!-- readme-test: run -->                      run it; its last command must exit 0
    <!-- readme-test: run; status 6 -->            ... must exit 6
    <!-- readme-test: run; expect "text" -->       ... and its output must contain "text"
    <!-- readme-test: until "text" -->             run it again until its output contains "text"
                                                   (the README tells the reader to run it again)
    <!-- readme-test: elsewhere — why -->          covered by another test, named in ``why``
    <!-- readme-test: skip — why -->               needs what CI lacks (Docker, a real domain)
    <!-- readme-test: text — what -->              not commands (a picture, a sample output)

``expect`` may be repeated. A block without a marker fails the unit test, so a new command in the
README is either executed in CI or says why not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!-- readme-test: ([^\n]*?) -->\n\Z")
_CLAUSE = re.compile(
    r'^(run|until|status|expect|elsewhere|skip|text)\b\s*(?:"([^"]*)"|(\d+))?(.*)$')
MODES = ("run", "until", "elsewhere", "skip", "text")


@dataclass
class Block:
    """One fenced block and its marker."""

    line: int
    code: str
    mode: str
    status: int = 0
    until: str | None = None
    expect: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def executed(self) -> bool:
        return self.mode in ("run", "until")


def parse_marker(text: str, line: int, code: str) -> Block:
    """The :class:`Block` a marker's text describes; ``ValueError`` on a malformed one."""
    block = Block(line=line, code=code, mode="")
    for clause in (c.strip() for c in text.split(";")):
        found = _CLAUSE.match(clause)
        if not found:
            raise ValueError(f"README.md:{line}: unknown clause {clause!r}")
        word, quoted, number, rest = found.groups()
        if word in ("elsewhere", "skip", "text"):
            block.mode, block.reason = word, rest.strip(" —-")
            if not block.reason:
                raise ValueError(f"README.md:{line}: {word} needs a reason")
        elif word == "run":
            block.mode = "run"
        elif word == "until" and quoted:
            block.mode, block.until = "until", quoted
        elif word == "status" and number:
            block.status = int(number)
        elif word == "expect" and quoted:
            block.expect.append(quoted)
        else:
            raise ValueError(f"README.md:{line}: malformed clause {clause!r}")
        if rest.strip() and word not in ("elsewhere", "skip", "text"):
            raise ValueError(f"README.md:{line}: trailing text in {clause!r}")
    if block.mode not in MODES:
        raise ValueError(f"README.md:{line}: the marker names no mode ({', '.join(MODES)})")
    return block


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, in order; ``ValueError`` for one without a marker."""
    text = README.read_text(encoding="utf-8") if text is None else text
    out = []
    for found in _BLOCK.finditer(text):
        line = text.count("\n", 0, found.start()) + 1
        before = text[: found.start()]
        marker = _MARKER.search(before[-400:])
        if marker is None:
            raise ValueError(f"README.md:{line}: a code block without a readme-test marker")
        out.append(parse_marker(marker.group(1), line, found.group(1)))
    return out
