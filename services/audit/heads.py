"""Signed heads, published outside the database: the file sink, the exchange sink, the loop.

Every ``DIHYA_AUDIT_HEADS_INTERVAL`` seconds (and on shutdown, after a retention purge and on
``POST /v1/audit/heads``) the service reads the chain's head under the writer lock, signs it
(:mod:`shared.anchor` has the format) and hands it to each sink:

* :class:`FileSink` appends it as one line to ``DIHYA_AUDIT_HEADS_FILE`` (a file, or a
  directory with one file per UTC day), flushed and fsynced;
* :class:`ExchangeSink` publishes it to the fanout exchange ``dihya.audit.heads``
  (persistent, confirmed, mandatory).

Each sink keeps its own queue of heads not yet written, in order: a head a sink could not take
is retried (backoff from 1 s to 30 s) before any newer head goes to that sink, counted in
``dihya_audit_head_publish_failures_total`` and shown in ``dihya_audit_heads_unpublished``
(alert ``DihyaAuditHeadsUnpublished``). A head lost with the process (a crash while a sink was
down) leaves no gap in the file's head chain: each head names the digest of the head signed
before it, and after a restart the chain resumes from the file's last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.audit import metrics
from services.audit.store import HeadState
from shared import anchor, topology
from shared.anchor import HeadSigner
from shared.broker import Publisher

log = structlog.get_logger("dihya.audit.heads")

RETRY_FIRST = 1.0
RETRY_MAX = 30.0
"""Backoff between two attempts to write the heads a sink missed (seconds)."""


class Sink(Protocol):
    name: str

    async def write(self, head: Mapping[str, Any]) -> None:
        """Store or publish ``head``; raise if it is not durably taken."""


def encode(head: Mapping[str, Any]) -> bytes:
    """A head as one line of the heads file (and the exchange message body)."""
    return anchor.canonical(dict(head))


class FileSink:
    """Appends heads to a JSON Lines file (``O_APPEND``, flushed and fsynced per head).

    A directory gets one file per UTC day (``heads-2026-12-06.jsonl``): on storage that keeps
    each object immutable once closed (S3 Object Lock, a WORM share), ship yesterday's file.
    """

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def target(self, time: str) -> Path:
        return self.path / f"heads-{time[:10]}.jsonl" if self.path.is_dir() else self.path

    async def write(self, head: Mapping[str, Any]) -> None:
        await asyncio.to_thread(_append, self.target(head["time"]), encode(head) + b"\n")

    def last_head(self) -> dict[str, Any] | None:
        """The newest whole head already written (the chain goes on from it), if any. Reads
        the files' ends only: a year of heads is a few hundred megabytes."""
        files = sorted(self.path.glob("heads-*.jsonl")) if self.path.is_dir() else [self.path]
        for path in reversed(files):
            if path.exists():
                head = _last_object(path)
                if head is not None:
                    return head
        return None


TAIL_BLOCK = 64 * 1024


def _last_object(path: Path) -> dict[str, Any] | None:
    """The last line of ``path`` that is a JSON object, reading backwards a block at a time."""
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            fh.seek(start)
            tail = fh.read(end - start) + tail
            end = start
            lines = tail.split(b"\n")
            complete = lines if start == 0 else lines[1:]  # the first may be cut
            for head in anchor.parse_lines(reversed(complete)):
                if head is not None:
                    return head
            tail = lines[0] if start > 0 else b""
    return None


def _append(path: Path, line: bytes) -> None:
    """Append ``line`` in one write; after a torn last line (power lost mid-write), start on
    a line of its own — the verifier skips a line that is not JSON, and the head chain
    resumes from the last whole head, so the torn one is simply not there."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


class ExchangeSink:
    """Publishes heads to the fanout exchange ``dihya.audit.heads`` and waits for the confirm
    (a head no queue takes is returned, and counts as not published)."""

    name = "exchange"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def write(self, head: Mapping[str, Any]) -> None:
        await self.publisher.publish(topology.AUDIT_HEADS_EXCHANGE, "", encode(head),
                                     type=anchor.HEAD_TYPE)


class Heads:
    """Signs heads and keeps every sink up to date (see the module docstring)."""

    def __init__(self, state: Callable[[], Awaitable[HeadState]], signer: HeadSigner,
                 sinks: Sequence[Sink], *, interval: float,
                 previous: Mapping[str, Any] | None = None,
                 retry_first: float = RETRY_FIRST, retry_max: float = RETRY_MAX) -> None:
        self._state = state
        self.signer = signer
        self.sinks = tuple(sinks)
        self.interval = interval
        self.retry_first, self.retry_max = retry_first, retry_max
        self.latest: Mapping[str, Any] | None = previous
        """The newest head signed (or, before the first, the last one of the heads file)."""
        self._previous = anchor.head_digest(previous) if previous else anchor.GENESIS_HASH
        self._pending: dict[str, deque[Mapping[str, Any]]] = {s.name: deque() for s in sinks}
        self._sign_lock = asyncio.Lock()
        self._sink_locks = {s.name: asyncio.Lock() for s in sinks}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        for sink in self.sinks:
            metrics.HEADS_UNPUBLISHED.labels(sink.name).set(0)

    @property
    def unpublished(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self._pending.items()}

    async def sign(self) -> Mapping[str, Any]:
        """Sign the chain's head now and hand it to every sink (the sinks' failures are
        retried later, not raised: the head is signed either way)."""
        async with self._sign_lock:
            state = await self._state()
            if state.forged_checkpoint is not None:
                metrics.CHECKPOINT_NOT_ATTESTED.inc()
                log.error("checkpoint_signature_invalid", last_seq=state.forged_checkpoint,
                          detail="the newest retention checkpoint is not signed by this "
                                 "service's key; heads do not attest it")
            head = self.signer.sign(
                seq=state.seq, head_hash=state.head_hash, records=state.records,
                time=state.time, previous_head_hash=self._previous,
                checkpoint=state.checkpoint)
            self._previous = anchor.head_digest(head)
            self.latest = head
            for queue in self._pending.values():
                queue.append(head)
            metrics.HEADS_SIGNED.inc()
        await self.flush()
        log.info("head_signed", seq=head["seq"], head_hash=head["head_hash"],
                 unpublished=self.unpublished)
        return head

    async def flush(self) -> bool:
        """Write every pending head to its sink, oldest first; True if none is left."""
        done = await asyncio.gather(*(self._flush(sink) for sink in self.sinks))
        return all(done)

    async def _flush(self, sink: Sink) -> bool:
        queue = self._pending[sink.name]
        async with self._sink_locks[sink.name]:
            while queue:
                head = queue[0]
                try:
                    await sink.write(head)
                except Exception as exc:
                    metrics.HEAD_PUBLISH_FAILURES.labels(sink.name).inc()
                    log.warning("head_not_published", sink=sink.name, seq=head["seq"],
                                pending=len(queue), error=f"{type(exc).__name__}: {exc}")
                    break
                queue.popleft()
                metrics.HEAD_PUBLISHED_AT.labels(sink.name).set_to_current_time()
            metrics.HEADS_UNPUBLISHED.labels(sink.name).set(len(queue))
            return not queue

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-heads")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_head = loop.time() + self.interval
        delay = self.retry_first
        while True:
            pending = any(self._pending.values())
            wait = next_head - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(min(wait, delay) if pending else wait, 0)):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            if loop.time() >= next_head:
                next_head = loop.time() + self.interval
                try:
                    await self.sign()
                except Exception:  # the database is down, say: next interval
                    metrics.HEAD_SIGN_FAILURES.inc()
                    log.exception("head_not_signed")
            elif pending:
                await self.flush()
            delay = (min(delay * 2, self.retry_max) if any(self._pending.values())
                     else self.retry_first)

    async def stop(self, grace: float) -> None:
        """Stop the loop, sign a last head (the writer has flushed) and give the sinks up to
        ``grace`` seconds to take what they still lack.

        The loop is asked to stop and let finish what it is doing, not cancelled: a head whose
        write had begun (the file sink's thread, a publish already sent) would be written
        again by the flush below, and a head twice in a row breaks the chain the verifier
        reads. It is cancelled only if it outlasts ``grace``."""
        try:
            async with asyncio.timeout(grace):
                await self._finish_loop()
                await self.sign()
                delay = self.retry_first
                while not await self.flush():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
        except TimeoutError:
            log.error("heads_unpublished_at_stop", unpublished=self.unpublished,
                      detail="these signed heads are lost with the process; the head chain "
                             "goes on from the newest head the file holds")
        except Exception:
            metrics.HEAD_SIGN_FAILURES.inc()
            log.exception("last_head_not_signed", unpublished=self.unpublished)

    async def _finish_loop(self) -> None:
        """Ask the loop to stop and wait until it has; cancel it if the wait is cancelled."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            self._task.cancel()
            raise
