"""Nothing outside ``shared/broker/fastpath.py`` reads or writes a library's private attribute.

That module's docstring and ``docs/dependencies.md`` claim it is the one seam for every bypass
of a library's public API. This test keeps the claim true: it parses the non-test code with
:mod:`ast` and flags every ``x._name`` (a single leading underscore, not a dunder) where
``_name`` is not defined anywhere in the project's own code — so ``self._store``,
``receiver._runner`` or ``module._helper`` pass (the project defines those names), and
``site._server`` (aiohttp's) fails. A name the project defines *and* a library defines would
slip through; the check is deliberately simple, and the project's private names are its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("services", "shared", "cli", "launcher", "docgen", "demo", "sdk", "bench")

# The seam itself: every bypass lives there, each listed in its docstring.
SEAM = Path("shared/broker/fastpath.py")

# Underscore names that are public API despite the underscore: namedtuple's documented methods
# and fields (``_asdict``, ``_replace``, ``_fields``, ``_make``), which SQLAlchemy's ``Row``
# keeps, plus ``Row._mapping``, SQLAlchemy's documented dict view of a row
# (https://docs.sqlalchemy.org/en/20/core/connections.html#sqlalchemy.engine.Row._mapping).
PUBLIC_UNDERSCORE = frozenset({"_asdict", "_replace", "_fields", "_make", "_mapping"})


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        yield from sorted((ROOT / top).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree: ast.AST) -> Iterator[str]:
    """Every name a module defines: functions, classes, assignments (``_x =``, ``self._x =``),
    annotated fields, import aliases, keyword-only and positional parameters."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[-1]
        elif isinstance(node, ast.arg):
            yield node.arg


def _accesses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            yield node.lineno, node.attr


@cache
def _parsed_once() -> dict[Path, ast.AST]:
    return {path.relative_to(ROOT): ast.parse(path.read_text(), str(path)) for path in _sources()}


def _parsed() -> dict[Path, ast.AST]:
    return dict(_parsed_once())


def foreign_private_accesses(trees: dict[Path, ast.AST]) -> list[str]:
    """``path:line ._name`` for each access of an underscore name the project does not define."""
    own = {name for tree in trees.values() for name in _defined(tree)}
    return [f"{path}:{line} .{name}"
            for path, tree in trees.items() if path != SEAM
            for line, name in _accesses(tree)
            if name not in own and name not in PUBLIC_UNDERSCORE]


def test_no_private_attribute_of_a_library_is_touched_outside_the_seam() -> None:
    assert foreign_private_accesses(_parsed()) == []


def test_the_scan_finds_sources_and_the_seam() -> None:
    trees = _parsed()
    assert len(trees) > 100
    assert SEAM in trees


def test_the_old_receiver_line_is_flagged() -> None:
    """aiohttp's ``site._server``, as ``demo/receiver.py`` read it before, is caught."""
    trees = _parsed()
    trees[Path("demo/receiver.py")] = ast.parse("server = site._server\n")
    assert foreign_private_accesses(trees) == ["demo/receiver.py:1 ._server"]


def test_an_access_inside_the_seam_is_allowed() -> None:
    trees = _parsed()
    trees[SEAM] = ast.parse("server = site._server\n")
    assert foreign_private_accesses(trees) == []
