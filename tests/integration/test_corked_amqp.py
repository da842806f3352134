"""Corked AMQP writes on the real broker: a burst of confirmed publishes leaves in a few sends,
and every message arrives, in publish order, with the properties the consumers rely on."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.broker import Publisher, connect
from shared.broker.fastpath import CorkedWriter


async def test_a_burst_of_publishes_leaves_in_few_sends(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sends: list[int] = []
    flush = CorkedWriter.flush

    def counting(self: CorkedWriter) -> None:
        if self._pending:
            sends.append(len(self._pending))
        flush(self)

    monkeypatch.setattr(CorkedWriter, "flush", counting)
    connection = await connect(amqp_url, service="test-cork", fast_path=True)  # its writer
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"cork-{uuid.uuid4().hex}", exclusive=True)
        publisher = await Publisher.open(connection)
        sends.clear()
        await asyncio.gather(*(publisher.publish("", queue.name, str(n).encode(),
                                                 headers={"n": n}, type="test.v1",
                                                 expiration=60)
                               for n in range(200)))
        assert sum(sends) >= 200  # every publish went through the corked writer...
        assert len(sends) <= 20  # ...in a handful of sends, not one per publish

        got = []
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                got.append(message)
                if len(got) == 200:
                    break
        assert [m.body for m in got] == [str(n).encode() for n in range(200)]
        first = got[0]
        assert (first.delivery_mode, first.content_type, first.type, first.headers["n"],
                first.expiration) == (2, "application/json", "test.v1", 0, 60)
        assert len({m.message_id for m in got}) == 200
    finally:
        await connection.close()
