"""The heads file sink on a real filesystem: one line per head, daily files in a directory, a
torn last line left alone, and the chain resumed from the newest whole head."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from services.audit import heads
from services.audit.heads import FileSink
from services.audit.store import HeadState
from shared import anchor

SIGNER = anchor.HeadSigner(bytes(range(32)))


def head(seq: int, day: int = 6, previous: str = anchor.GENESIS_HASH) -> dict[str, Any]:
    return SIGNER.sign(seq=seq, head_hash=f"{seq:064x}", records=seq,
                       time=f"2026-12-{day:02d}T12:00:00.000000Z", previous_head_hash=previous,
                       checkpoint=None)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_file_gets_one_canonical_line_per_head(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "heads.jsonl")
    assert sink.last_head() is None
    first, second = head(1), head(2)
    await sink.write(first)
    await sink.write(second)
    assert (tmp_path / "heads.jsonl").read_bytes() == (
        anchor.canonical(first) + b"\n" + anchor.canonical(second) + b"\n")
    assert sink.last_head() == second


async def test_a_directory_gets_one_file_per_day(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    await sink.write(head(1, day=6))
    await sink.write(head(2, day=7))
    await sink.write(head(3, day=7))
    assert names(tmp_path) == ["heads-2026-12-06.jsonl", "heads-2026-12-07.jsonl"]
    assert sink.last_head() == head(3, day=7)


async def test_after_a_torn_line_the_next_head_starts_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "heads.jsonl"
    whole = head(1)
    path.write_bytes(anchor.canonical(whole) + b"\n" + anchor.canonical(head(2))[:50])
    sink = FileSink(path)
    assert sink.last_head() == whole  # the chain goes on from the last whole head
    following = head(3, previous=anchor.head_digest(whole))
    await sink.write(following)
    parsed = list(anchor.parse_lines(path.read_bytes().splitlines()))
    assert parsed == [whole, None, following]
    verifier = anchor.OfflineVerifier(parsed, SIGNER.public)
    # the heads still chain (no record given: only the log's length is wrong)
    assert verifier.torn == 1 and verifier.verdict().kind == "truncated"


def test_the_last_head_is_read_from_the_end_across_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads, "TAIL_BLOCK", 100)  # a head line is ~400 bytes
    path = tmp_path / "heads.jsonl"
    lines = [anchor.canonical(head(seq)) for seq in range(1, 30)]
    path.write_bytes(b"\n".join(lines) + b"\n" + b'{"torn')
    assert FileSink(path).last_head() == head(29)
    path.write_bytes(b"garbage\n" * 3)
    assert FileSink(path).last_head() is None


class FinishingSink:
    """A sink whose write goes on once started, as the file sink's thread and a sent publish
    do: cancelling the caller does not take a started write back."""

    name = "finishing"

    def __init__(self) -> None:
        self.written: list[Mapping[str, Any]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, head: Mapping[str, Any]) -> None:
        await asyncio.shield(self._write(head))

    async def _write(self, head: Mapping[str, Any]) -> None:
        self.entered.set()
        await self.release.wait()
        self.written.append(head)


async def test_stopping_while_a_head_is_being_written_writes_every_head_once(
        tmp_path: Path) -> None:
    seq = 0

    async def state() -> HeadState:
        nonlocal seq
        seq += 1
        return HeadState(seq=seq, head_hash=f"{seq:064x}", records=seq,
                         time=f"2026-12-06T12:00:{seq:02d}.000000Z", checkpoint=None)

    sink, file_sink = FinishingSink(), FileSink(tmp_path / "heads.jsonl")
    signing = heads.Heads(state, SIGNER, [sink, file_sink], interval=0.001)
    signing.start()
    await sink.entered.wait()  # the loop's first head is being written
    stopping = asyncio.create_task(signing.stop(grace=5))
    sink.release.set()
    await stopping
    in_file = [h for h in anchor.parse_lines(
        (tmp_path / "heads.jsonl").read_bytes().splitlines()) if h is not None]
    for written in (sink.written, in_file):
        seqs = [h["seq"] for h in written]
        assert seqs == sorted(set(seqs)), seqs  # each head once, in order
        for before, after in itertools.pairwise(written):
            assert after["previous_head_hash"] == anchor.head_digest(before)
    assert sink.written == in_file and len(in_file) >= 2  # the loop's head and the last one
