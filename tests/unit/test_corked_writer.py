"""CorkedWriter: what one loop iteration writes leaves as one write, in order, and nothing waits
longer than the end of that iteration (or a drain, or a close) — except, on a busy connection,
for the rest of the minimum interval since the last send."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.broker.fastpath import CorkedWriter


class RecordingTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

        self.written = asyncio.Event()

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.written.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def _writer(min_interval: float = 0.0) -> tuple[CorkedWriter, RecordingTransport]:
    loop = asyncio.get_running_loop()
    transport = RecordingTransport()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    protocol.connection_made(transport)
    return (CorkedWriter(transport, protocol, reader, loop, min_interval=min_interval),
            transport)


async def test_one_iteration_is_one_write_in_order() -> None:
    writer, transport = _writer()
    writer.write(b"publish-1")
    writer.writelines([b"|ack-7", memoryview(b"|publish-2")])
    assert transport.writes == []  # nothing sent mid-iteration
    await asyncio.sleep(0)  # the end of this iteration
    assert transport.writes == [b"publish-1|ack-7|publish-2"]
    writer.write(b"next")
    await asyncio.sleep(0)
    assert transport.writes == [b"publish-1|ack-7|publish-2", b"next"]


async def test_drain_does_not_send_early_and_close_sends_what_is_pending() -> None:
    writer, transport = _writer()
    writer.write(b"ack-1")
    await writer.drain()  # aiormq drains after every ack: that must not cost a send each
    writer.write(b"ack-2")
    await writer.drain()
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"ack-1ack-2"]
    writer.write(b"close-frame")
    writer.close()
    assert transport.writes == [b"ack-1ack-2", b"close-frame"] and transport.closed
    await asyncio.sleep(0)  # the flush scheduled by the write finds nothing left to send
    assert transport.writes == [b"ack-1ack-2", b"close-frame"]


async def test_a_busy_connection_sends_at_most_once_per_interval() -> None:
    loop = asyncio.get_running_loop()
    writer, transport = _writer(min_interval=0.05)
    writer.write(b"a")
    await asyncio.sleep(0)
    assert transport.writes == [b"a"]  # after a quiet spell: at the end of the iteration
    sent = loop.time()
    transport.written.clear()
    writer.write(b"b")
    await asyncio.sleep(0)
    writer.write(b"c")
    await asyncio.sleep(0)
    assert transport.writes == [b"a"]  # within the interval: held, and gathered
    await asyncio.wait_for(transport.written.wait(), timeout=5)
    assert transport.writes == [b"a", b"bc"]
    assert loop.time() - sent >= 0.049
    writer.write(b"closing")
    writer.close()  # a close does not wait for the interval
    assert transport.writes == [b"a", b"bc", b"closing"]
