"""Which path a broker connection takes: the fast one (:mod:`shared.broker.fastpath`) or the
plain one (aio-pika's public API alone). Pure decisions, no I/O: unit-tested alone.

The fast path reaches into aio-pika's and aiormq's internals, which a release may change
without notice: it is taken only when the setting asks for it (``DIHYA_AMQP_FAST_PATH``) *and*
the installed versions are within the range it was tested with (:data:`TESTED`). Outside it
(a newer minor release, a pre-release, a version that cannot be read), the plain path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Release = tuple[int, int, int]


@dataclass(frozen=True)
class Range:
    """The releases of one distribution the fast path was tested with: ``floor <= v < below``."""

    floor: Release
    below: Release

    def __str__(self) -> str:
        return f">={_text(self.floor)},<{_text(self.below)}"


TESTED: Mapping[str, Range] = {
    # the declared floors (bin/floors runs the broker tests there) up to the locked minor
    # (locks/runtime.txt: aio-pika 10.2.1, aiormq 7.2.4): widen only after running the
    # integration and crash suites on the new versions
    "aio-pika": Range(floor=(10, 0, 0), below=(10, 3, 0)),
    "aiormq": Range(floor=(7, 1, 0), below=(7, 3, 0)),
}

_RELEASE = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


@dataclass(frozen=True)
class Choice:
    """The path to take, and why."""

    fast: bool
    reason: Literal["setting", "untested_versions", "tested_versions"]
    untested: tuple[str, ...] = ()
    """``name version`` of each distribution outside :data:`TESTED` (for the warning)."""


def release(version: str | None) -> Release | None:
    """``10.2.1`` → ``(10, 2, 1)`` (missing parts are 0); ``None`` for anything but a final
    release (``10.3.0rc1``, ``7.2.4.post1``, ``10.2.1+local``, ``7.2.4.1``, garbage, none)."""
    match = _RELEASE.fullmatch(version.strip()) if version else None
    if match is None:
        return None
    major, minor, micro = (int(part or 0) for part in match.groups())
    return (major, minor, micro)


def choose(wanted: bool, installed: Mapping[str, str | None],
           tested: Mapping[str, Range] = TESTED) -> Choice:
    """The path, given the setting and the installed version of each distribution ``tested``
    names (``None``: not installed, or unreadable)."""
    if not wanted:
        return Choice(fast=False, reason="setting")
    untested = tuple(f"{name} {installed.get(name)}" for name, bounds in tested.items()
                     if not _within(release(installed.get(name)), bounds))
    if untested:
        return Choice(fast=False, reason="untested_versions", untested=untested)
    return Choice(fast=True, reason="tested_versions")


def _within(version: Release | None, bounds: Range) -> bool:
    return version is not None and bounds.floor <= version < bounds.below


def _text(version: Release) -> str:
    return ".".join(str(part) for part in version)
