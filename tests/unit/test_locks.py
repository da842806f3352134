"""The locks (``locks/*.txt``, written by ``bin/lock``) match ``pyproject.toml``.

A dependency changed in ``pyproject.toml`` without ``bin/lock`` fails here: every
requirement of the lock's extras is pinned, at a version inside the declared range, with
hashes; every install path (``bin/*``, ``.ci/run``, the Dockerfile) reads a lock.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "locks"
EXTRAS = {"runtime": (), "demo": ("demo",), "bench": ("bench",), "dev": ("dev",)}


@cache
def _project() -> dict[str, object]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def _pins(lock: str) -> dict[str, list[tuple[Version, str]]]:
    """Name → the (version, marker) pins of a lock (universal: one name may have several)."""
    text = (LOCKS / f"{lock}.txt").read_text()
    pins: dict[str, list[tuple[Version, str]]] = {}
    for entry in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)\s*(?:;\s*([^\\\n]+))?", entry)
        if not match:
            continue
        assert "--hash=sha256:" in entry, f"{lock}: {match.group(1)} has no hash"
        name = canonicalize_name(match.group(1).split("[")[0])
        pins.setdefault(name, []).append((Version(match.group(2)), match.group(3) or ""))
    return pins


@pytest.mark.parametrize("lock", sorted(EXTRAS))
def test_lock_pins_every_requirement_within_its_range(lock: str) -> None:
    pins = _pins(lock)
    optional = _project()["optional-dependencies"]
    assert isinstance(optional, dict)
    required = list(_project()["dependencies"])  # type: ignore[call-overload]
    for extra in EXTRAS[lock]:
        required += optional[extra]
    required += ["setuptools>=77"]
    for text in required:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"locks/{lock}.txt lacks {req.name}: run bin/lock"
        for version, _ in pins[name]:
            assert version in req.specifier, (
                f"locks/{lock}.txt pins {req.name}=={version}, outside {req.specifier}: "
                "run bin/lock")


def test_every_install_path_reads_a_lock() -> None:
    venv = (ROOT / "bin/_venv.sh").read_text()
    assert "--require-hashes" in venv and '-r "$lock"' in venv
    assert 'lock="locks/${extras:-runtime}.txt"' in venv
    for script, extras in (("demo", "demo"), ("test", "dev"), ("bench", "bench")):
        text = (ROOT / "bin" / script).read_text()
        assert f"ensure_venv {extras}\n" in text and (LOCKS / f"{extras}.txt").is_file()
    assert "exec bin/test" in (ROOT / ".ci/run").read_text()
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert "pip install --require-hashes --no-deps -r locks/runtime.txt" in dockerfile
    assert "uv==" in (LOCKS / "uv.txt").read_text() and "--hash=" in (LOCKS / "uv.txt").read_text()
