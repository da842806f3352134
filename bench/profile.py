"""Where the time goes: py-spy samples of each service at saturation, summarised.

``py-spy record --gil --nonblocking --format raw`` writes collapsed stacks (``frame;frame;…
count``) of the thread holding the GIL, i.e. of Python work. (Without ``--gil``, py-spy counts
aiosqlite's worker threads blocked in ``queue.get`` as busy, which swamps the picture; work in C
with the GIL released — SQLite itself, socket syscalls — is what ``--gil`` misses, and what the
per-thread CPU split from psutil, :func:`thread_cpu`, shows.) From the stacks, per service:

* ``by_package``: the leaf frame of each sample charged to the package that owns it (an
  installed distribution, a stdlib module, or the project's ``services.<name>`` / ``shared``) —
  "self time" by library;
* ``top_self``: the functions with the most self samples;
* ``top_project``: the project's own functions by *inclusive* samples (a sample counts once
  for every distinct project function on its stack), i.e. which of our code paths cost what.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy binary next to this interpreter, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


async def record(pids: dict[str, list[int]], duration: float, out_dir: Path, rate: int = 100
                 ) -> dict[str, list[Path]]:
    """Record every process of every group for ``duration`` seconds, at the same time."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy, or bin/bench)")
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    runs: list[tuple[str, Path, asyncio.subprocess.Process]] = []
    for group, group_pids in pids.items():
        for pid in group_pids:
            path = out_dir / f"{group}-{pid}.txt"
            proc = await asyncio.create_subprocess_exec(
                binary, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))),
                "--rate", str(rate), "--format", "raw", "--full-filenames", "--function",
                "--gil", "--nonblocking", "--output", str(path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            runs.append((group, path, proc))
    files: dict[str, list[Path]] = {}
    errors = []
    for group, path, proc in runs:
        _, err = await proc.communicate()
        if proc.returncode == 0 and path.exists():
            files.setdefault(group, []).append(path)
        else:
            errors.append(f"{group}: {err.decode(errors='replace').strip()[-300:]}")
    if errors and not files:
        raise RuntimeError("py-spy failed: " + "; ".join(errors))
    return files


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """Cumulative CPU seconds of the main threads and of every other thread of ``pids``."""
    import psutil

    main = other = 0.0
    for pid in pids:
        try:
            for thread in psutil.Process(pid).threads():
                used = thread.user_time + thread.system_time
                if thread.id == pid:
                    main += used
                else:
                    other += used
        except psutil.Error:
            continue
    return {"main": main, "other": other}


def package_of(filename: str, project_root: Path) -> str:
    """Who owns the code in ``filename`` (see the module docstring)."""
    if "site-packages/" in filename:
        rest = filename.split("site-packages/", 1)[1]
        top = rest.split("/", 1)[0]
        return top.removesuffix(".py").split(".")[0]
    if not filename.startswith("/"):
        return filename or "?"
    try:
        rel = Path(filename).relative_to(project_root)
    except ValueError:
        rel = None
    if rel is not None and rel.parts:
        parts = rel.parts
        if parts[0] == "services" and len(parts) > 1:
            return f"services.{parts[1]}"
        return parts[0].removesuffix(".py")
    match = re.search(r"/lib/python3\.\d+/(?P<mod>[^/]+)", filename)
    if match:
        return "stdlib." + match.group("mod").removesuffix(".py")
    return filename or "?"


def _parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    line = line.rstrip("\n")
    if not line or " " not in line:
        return None
    stack, _, count = line.rpartition(" ")
    try:
        n = int(count)
    except ValueError:
        return None
    frames = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        frames.append((match.group("func"), match.group("file")) if match else (frame, ""))
    return frames, n


def summarise(files: list[Path], project_root: Path, top: int = 12) -> dict[str, Any]:
    """Summary of one group's collapsed stacks (all its processes together)."""
    total = 0
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    project: Counter[str] = Counter()
    root = str(project_root)
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            parsed = _parse(line)
            if parsed is None:
                continue
            frames, n = parsed
            total += n
            func, file = frames[-1]
            package = package_of(file, project_root)
            by_package[package] += n
            self_time[f"{func} ({package})"] += n
            ours = {f"{f} ({package_of(p, project_root)})" for f, p in frames
                    if p.startswith(root) and ".venv" not in p}
            for name in ours:
                project[name] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "samples": v, "pct": round(100 * v / total, 1)}
                for k, v in counter.most_common(top)] if total else []

    return {"samples": total, "by_package": share(by_package), "top_self": share(self_time),
            "top_project": share(project)}
