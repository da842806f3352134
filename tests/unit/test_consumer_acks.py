"""How a consumer's acks are coalesced (shared.broker._Acks): a ``multiple`` ack only ever
covers tags that were seen and finished without a gap; everything else is acked alone."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import aiormq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.broker import _Acks
from tests.conftest import wait_for


@dataclass
class Channel:
    """Acks as RabbitMQ takes them: a tag not outstanding (never delivered, acked or nacked
    already) is an error that closes the channel; ``multiple`` settles every outstanding tag up
    to its own."""

    delivered: int = 10_000
    sent: list[tuple[int, bool]] = field(default_factory=list)
    nacked: set[int] = field(default_factory=set)
    closed: bool = False

    async def basic_ack(self, delivery_tag: int, multiple: bool = False,
                        wait: bool = True) -> None:
        if self.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        if delivery_tag in self.acked() | self.nacked or delivery_tag > self.delivered:
            self.closed = True
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        self.sent.append((delivery_tag, multiple))

    def nack(self, message: Message, acks: _Acks) -> None:
        self.nacked.add(message.delivery_tag)
        acks.settled(message)  # type: ignore[arg-type]

    def acked(self) -> set[int]:
        done: set[int] = set()
        for tag, multiple in self.sent:
            done |= (set(range(1, tag + 1)) - self.nacked) if multiple else {tag}
        return done


@dataclass
class Message:
    delivery_tag: int
    on: Channel

    @property
    def channel(self) -> Any:
        if self.on.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        return self.on


async def test_messages_finished_in_order_go_in_one_multiple_ack() -> None:
    acks, channel = _Acks(), Channel()
    for tag in range(1, 51):
        acks.finished(Message(tag, channel))  # type: ignore[arg-type]
    await acks.drain()
    assert channel.sent == [(50, True)]


async def test_one_finished_out_of_order_waits_briefly_for_a_multiple_ack() -> None:
    acks, channel = _Acks(hold=30.0), Channel()  # a hold no slow test machine outlasts
    for tag in (1, 2, 4, 5):
        acks.finished(Message(tag, channel))  # type: ignore[arg-type]
    await wait_for(lambda: channel.sent, timeout=2)
    assert channel.sent == [(2, True)]  # 4 and 5 wait for 3
    acks.finished(Message(3, channel))  # type: ignore[arg-type]
    await wait_for(lambda: channel.acked() == {1, 2, 3, 4, 5}, timeout=2)
    assert channel.sent == [(2, True), (5, True)]


async def test_behind_a_slow_one_the_others_are_acked_alone_after_the_hold() -> None:
    acks, channel = _Acks(), Channel()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for tag in (2, 3):
        acks.finished(Message(tag, channel))  # type: ignore[arg-type]
    await wait_for(lambda: len(channel.sent) == 2, timeout=2)  # 1 is still in flight
    assert channel.sent == [(2, False), (3, False)]
    assert loop.time() - started >= _Acks.HOLD * 0.9
    acks.finished(Message(1, channel))  # type: ignore[arg-type]
    await acks.drain()
    assert channel.sent[-1] == (1, True) and channel.acked() == {1, 2, 3}


async def test_a_nacked_message_is_passed_over_not_acked() -> None:
    acks, channel = _Acks(), Channel()
    acks.finished(Message(1, channel))  # type: ignore[arg-type]
    channel.nack(Message(2, channel), acks)
    acks.finished(Message(3, channel))  # type: ignore[arg-type]
    await acks.drain()
    # the multiple ack up to 3 passes over 2, which the broker no longer counts as outstanding
    assert channel.sent == [(3, True)]


async def test_after_a_reconnect_the_old_channels_tags_are_left_to_redelivery() -> None:
    acks, old, new = _Acks(), Channel(), Channel()
    acks.finished(Message(1, old))  # type: ignore[arg-type]
    await acks.drain()
    old.closed = True
    acks.finished(Message(2, old))  # type: ignore[arg-type]  # finished after the drop
    acks.finished(Message(1, new))  # type: ignore[arg-type]
    await acks.drain()
    assert old.sent == [(1, True)] and new.sent == [(1, True)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_acks_exactly_the_finished_never_an_unknown_tag(data: st.DataObject) -> None:
    """Whatever the order of completion, with some nacked and some never finishing, and
    flushes (held acks included) at any point: exactly the finished tags are acked, and no
    ack names a tag the broker no longer holds (that would close the channel)."""
    n = data.draw(st.integers(1, 60))
    order = data.draw(st.permutations(range(1, n + 1)))
    fate = {tag: data.draw(st.sampled_from(["ack", "ack", "ack", "nack", "lost"]))
            for tag in order}
    drains = data.draw(st.sets(st.integers(0, n)))

    async def run() -> Channel:
        acks, channel = _Acks(hold=0.0), Channel(delivered=n)
        for i, tag in enumerate(order):
            message = Message(tag, channel)
            if fate[tag] == "ack":
                acks.finished(message)  # type: ignore[arg-type]
            elif fate[tag] == "nack":
                channel.nack(message, acks)
            if i in drains:
                await acks.drain()
            else:
                await asyncio.sleep(0)
        await acks.drain()
        return channel

    channel = asyncio.run(run())
    assert not channel.closed
    assert channel.acked() == {tag for tag in order if fate[tag] == "ack"}


@pytest.mark.parametrize("seed", range(3))
async def test_many_concurrent_handlers(seed: int) -> None:
    rng = random.Random(seed)
    acks, channel = _Acks(), Channel()

    async def handler(tag: int) -> None:
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        acks.finished(Message(tag, channel))  # type: ignore[arg-type]

    await asyncio.gather(*(handler(tag) for tag in range(1, 301)))
    await acks.drain()
    assert channel.acked() == set(range(1, 301))
    assert len(channel.sent) < 30  # coalesced (one frame per message would be 300)
