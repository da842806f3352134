"""The broker path decision (shared/broker/paths.py): the fast path only when asked for and
only with aio-pika and aiormq releases inside the range it was tested with."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.broker import paths
from shared.broker.paths import TESTED, Range, choose, release

parts = st.integers(min_value=0, max_value=40)
releases = st.tuples(parts, parts, parts)
suffixes = st.sampled_from(["rc1", "a2", "b1", ".dev0", ".post1", "+local", ".1", "-x"])


def text(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


@settings(deadline=None)  # a loaded CI machine: no per-example time limit
@given(releases)
def test_a_final_release_reads_as_its_numbers(version: tuple[int, int, int]) -> None:
    assert release(text(version)) == version
    assert release(f"{version[0]}.{version[1]}") == (version[0], version[1], 0)


@settings(deadline=None)  # a loaded CI machine: no per-example time limit
@given(releases, suffixes)
def test_anything_but_a_final_release_reads_as_none(version: tuple[int, int, int],
                                                    suffix: str) -> None:
    assert release(text(version) + suffix) is None


@settings(deadline=None)  # a loaded CI machine: no per-example time limit
@given(st.text(max_size=12).filter(lambda t: not t.strip().replace(".", "").isdigit()))
def test_garbage_reads_as_none(value: str) -> None:
    assert release(value) is None


@settings(deadline=None)  # a loaded CI machine: no per-example time limit
@given(releases, releases)
def test_fast_exactly_when_every_version_is_in_its_tested_range(
        pika: tuple[int, int, int], rmq: tuple[int, int, int]) -> None:
    choice = choose(True, {"aio-pika": text(pika), "aiormq": text(rmq)})
    inside = {name: TESTED[name].floor <= v < TESTED[name].below
              for name, v in (("aio-pika", pika), ("aiormq", rmq))}
    assert choice.fast == all(inside.values())
    assert choice.reason == ("tested_versions" if choice.fast else "untested_versions")
    assert {entry.split()[0] for entry in choice.untested} == {
        name for name, ok in inside.items() if not ok}


@settings(deadline=None)  # a loaded CI machine: no per-example time limit
@given(st.dictionaries(st.sampled_from(["aio-pika", "aiormq"]),
                       st.none() | releases.map(text) | st.text(max_size=8)))
def test_off_when_the_setting_says_so_whatever_the_versions(
        installed: dict[str, str | None]) -> None:
    assert choose(False, installed) == paths.Choice(fast=False, reason="setting")


@settings(deadline=None)  # a loaded CI machine: no per-example time limit
@given(releases.map(text) | st.none())
def test_a_missing_or_prerelease_distribution_means_the_plain_path(pika: str | None) -> None:
    assert not choose(True, {"aio-pika": pika}).fast  # aiormq not installed
    assert not choose(True, {"aio-pika": "10.2.0rc1", "aiormq": "7.2.4"}).fast


def test_the_locked_versions_and_the_declared_floors_take_the_fast_path() -> None:
    locked = {}
    for line in Path("locks/runtime.txt").read_text(encoding="utf-8").splitlines():
        name, _, rest = line.partition("==")
        if name in TESTED:
            locked[name] = rest.split()[0]
    assert set(locked) == set(TESTED)
    assert choose(True, locked).fast, locked
    with open("pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    floors = {}
    for requirement in declared:
        name, _, rest = requirement.partition(">=")
        if name in TESTED:
            floors[name] = rest.split(",")[0]
    assert set(floors) == set(TESTED)
    assert choose(True, floors).fast, floors  # bin/floors runs the fast path there
    assert not choose(True, {"aio-pika": "10.3.0", "aiormq": "7.2.4"}).fast
    assert not choose(True, {"aio-pika": "10.2.1", "aiormq": "7.0.9"}).fast


def test_the_tested_range_reads_as_a_specifier() -> None:
    assert str(Range(floor=(7, 1, 0), below=(7, 3, 0))) == ">=7.1.0,<7.3.0"
