"""The image's build context makes a working package: every entry point imports from it.

No container engine runs here, so this does what ``deploy/Dockerfile``'s build stage does, on
exactly the files ``docker build`` would send: the repository filtered by ``.dockerignore``
(Docker's rules: last matching pattern wins, ``!`` re-includes, a pattern that matches a
directory matches everything under it). From that copy it builds the wheel, installs it with
the runtime lock (``locks/runtime.txt``, hashes checked) into a fresh virtualenv, and there
loads every ``console_scripts`` entry point, runs ``dihya --help`` and imports each service
the image targets start. A directory left out of the context (``cli/`` was) fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
SERVICES = ("ingest", "signer", "deliverer", "audit")


def _pattern(text: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex over ``/``-separated relative paths."""
    parts = []
    i = 0
    while i < len(text):
        if text.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif text.startswith("**", i):
            parts.append(".*")
            i += 2
        elif text[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif text[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(text[i]))
            i += 1
    return re.compile("".join(parts))


@cache
def _rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _pattern(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))
    return tuple(rules)


def excluded(path: str) -> bool:
    """Whether ``docker build`` leaves ``path`` (relative, ``/``-separated) out of the context."""
    prefixes = [path]
    while "/" in prefixes[-1]:
        prefixes.append(prefixes[-1].rsplit("/", 1)[0])
    result = False
    for keep, pattern in _rules():
        if any(pattern.fullmatch(p) for p in prefixes):
            result = not keep
    return result


def context_files() -> list[str]:
    """The files of the build context, as ``docker build`` would send them."""
    files = []
    for top, dirs, names in os.walk(ROOT):
        rel_top = os.path.relpath(top, ROOT).replace(os.sep, "/")
        rel_top = "" if rel_top == "." else rel_top + "/"
        dirs[:] = [d for d in dirs if d != ".git" and not _pruned(rel_top + d)]
        files += [rel_top + n for n in names if not excluded(rel_top + n)]
    return sorted(files)


def _pruned(directory: str) -> bool:
    """A directory nothing under which can be re-included (so the walk can skip it)."""
    if not excluded(directory):
        return False
    return not any(keep and _could_reach(pattern.pattern, directory) for keep, pattern in _rules())


def _could_reach(pattern: str, directory: str) -> bool:
    literal = re.split(r"[\[(.^$*+?{|\\]", pattern, maxsplit=1)[0]
    return literal.startswith(directory + "/") or (directory + "/").startswith(literal)


def test_dockerignore_rules_follow_docker() -> None:
    assert excluded("tests/unit/test_deploy.py") and excluded(".venv/bin/python")
    assert not excluded("cli/main.py") and not excluded("locks/runtime.txt")
    assert excluded("locks/dev.txt"), "only the runtime lock goes into the image"
    assert excluded("shared/__pycache__/broker.cpython-311.pyc")
    assert not excluded("services/ingest/console/static/index.html")


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    env = {**os.environ, "UV_LINK_MODE": "copy"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False, env=env)
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_from_the_image_context_runs_every_entry_point(tmp_path: Path) -> None:
    if not UV.exists():
        pytest.skip(f"no uv beside {sys.executable} (bin/test installs it from locks/dev.txt)")
    context = tmp_path / "context"
    files = context_files()
    assert "cli/main.py" in files and "locks/runtime.txt" in files
    for rel in files:
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / rel).read_bytes())
    # The build stage: the runtime lock (hashes checked), then the project, built by the
    # lock's setuptools without build isolation, exactly as deploy/Dockerfile does.
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    _run(UV, "venv", "--quiet", "--python", sys.executable, venv)
    _run(UV, "pip", "install", "--quiet", "--require-hashes", "--no-deps", "--python", python,
         "-r", "locks/runtime.txt", cwd=context)
    # The wheel, by this interpreter's setuptools (the same lock run as the runtime lock's).
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", tmp_path / "dist", context)
    (wheel,) = (tmp_path / "dist").glob("dihya_webhooks-*.whl")
    _run(UV, "pip", "install", "--quiet", "--no-deps", "--python", python, wheel)
    # Outside the repository, so nothing imports from the checkout instead of the wheel.
    loaded = _run(python, "-c", _LOAD_ENTRY_POINTS, cwd=tmp_path)
    names = set(loaded.split())
    assert {"dihya", "dihya-demo"} <= names, loaded
    assert "usage:" in _run(venv / "bin" / "dihya", "--help", cwd=tmp_path).lower()


_LOAD_ENTRY_POINTS = f"""
import importlib
from importlib.metadata import distribution

dist = distribution("dihya-webhooks")
assert "site-packages" in str(dist.locate_file("")), dist.locate_file("")
for ep in dist.entry_points:
    if ep.group == "console_scripts":
        assert callable(ep.load()), ep
        print(ep.name)
for service in {SERVICES!r}:
    module = importlib.import_module(f"services.{{service}}.app")
    assert "site-packages" in module.__file__, module.__file__
    importlib.import_module(f"services.{{service}}.__main__")
"""
