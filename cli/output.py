"""Rendering for humans (tables, key/value blocks, a progress bar) and for scripts (JSON).

Column widths count what a terminal shows, not code points: combining marks (Arabic harakat,
Tifinagh's labio-velarization mark) take no column, East Asian wide characters two. Right-to-left
text is printed in logical order and left to the terminal's bidi support: reordering it here
would corrupt it on terminals that do their own.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

import orjson

MAX_CELL = 60
"""Longest cell in a table; longer text is cut with an ellipsis (``show`` prints it whole)."""


def width(text: str) -> int:
    """Terminal columns ``text`` takes."""
    total = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def clip(text: str, limit: int = MAX_CELL) -> str:
    """``text`` cut to ``limit`` columns, with ``…`` when cut."""
    if width(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > limit - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - width(text))


def cell(value: Any) -> str:
    """How a JSON value reads in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain table: a header line, a rule, one line per row (cells clipped)."""
    cells = [[clip(cell(v)) for v in row] for row in rows]
    widths = [width(h) for h in headers]
    for row in cells:
        widths = [max(w, width(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("─" * w for w in widths)]
    lines += ["  ".join(pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def pairs(items: Iterable[tuple[str, Any]]) -> str:
    """Aligned ``label  value`` lines (values whole, not clipped)."""
    items = list(items)
    column = max((width(label) for label, _ in items), default=0)
    return "\n".join(f"{pad(label, column)}  {cell(value)}" for label, value in items)


def dumps(data: Any) -> str:
    """JSON for scripts: the API's own objects, indented, keys in the API's order."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def short_time(value: Any) -> str:
    """``2025-05-20T12:00:00.123456Z`` → ``2025-05-20 12:00:00Z`` (tables need the second,
    not the microsecond; ``--json`` keeps the full value)."""
    if not isinstance(value, str) or len(value) < 19 or value[10] != "T":
        return cell(value)
    return f"{value[:10]} {value[11:19]}" + ("Z" if value.endswith(("Z", "+00:00")) else "")


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


class Progress:
    """A one-line progress bar on a terminal: ``[████░░░░]  42%  1.2 MiB``.

    ``fraction`` may be unknown (None): the line then shows the bytes only. Redrawn at most
    ten times a second, so a fast transfer does not spend its time drawing. ``label`` renders
    the trailing text (bytes, records) in the user's language.
    """

    BAR = 24

    def __init__(self, stream: TextIO, label: Callable[[int], str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.label = label
        self.clock = clock
        self._last = -1.0
        self.drawn = 0

    def line(self, fraction: float | None, done_bytes: int) -> str:
        text = self.label(done_bytes)
        if fraction is None:
            return text
        fraction = min(max(fraction, 0.0), 1.0)
        full = round(fraction * self.BAR)
        return f"[{'█' * full}{'░' * (self.BAR - full)}] {fraction * 100:3.0f}%  {text}"

    def update(self, fraction: float | None, done_bytes: int, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self.stream.write("\r" + self.line(fraction, done_bytes) + "\x1b[K")
        self.stream.flush()
        self.drawn += 1

    def finish(self, fraction: float | None, done_bytes: int) -> None:
        self.update(fraction, done_bytes, force=True)
        self.stream.write("\n")
        self.stream.flush()
