"""The broker node list: parsing ``DIHYA_AMQP_URL`` and the failover order (shared.nodes)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.nodes import DEFAULT_HEARTBEAT, failover_order, first_node, parse
from shared.settings import ServiceSettings


def test_one_url_is_a_list_of_one_with_the_default_heartbeat() -> None:
    nodes = parse("amqp://u:p@rmq:5673/dihya")
    assert nodes.addresses == (("rmq", 5673),)
    assert nodes.url.query["heartbeat"] == str(DEFAULT_HEARTBEAT)
    assert (nodes.url.user, nodes.url.password, nodes.url.path) == ("u", "p", "/dihya")


def test_a_list_keeps_its_order_and_default_ports() -> None:
    nodes = parse("amqp://u:p@a:5672/v, amqp://u:p@b/v,amqp://u:p@c:5999/v")
    assert nodes.addresses == (("a", 5672), ("b", 5672), ("c", 5999))
    assert parse("amqps://u:p@a/v").addresses == (("a", 5671),)


def test_a_heartbeat_in_the_url_wins() -> None:
    assert parse("amqp://a/?heartbeat=7", heartbeat=5).url.query["heartbeat"] == "7"
    assert parse("amqp://a/", heartbeat=9).url.query["heartbeat"] == "9"


@pytest.mark.parametrize("value", [
    "", "amqp://u:p@a/v,", "amqp://u:p@a/v,amqp://u:q@b/v", "amqp://u:p@a/v,amqp://u:p@b/w",
    "amqp://a/?x=1,amqp://b/", "http://a/", "amqp:///v", "amqp://a/,amqps://b/",
])
def test_a_malformed_or_mixed_list_is_refused(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # the message varies with the mistake
        parse(value)


def test_settings_refuse_a_malformed_list_without_echoing_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIHYA_AMQP_URL", "amqp://u:s3cret@a/v,amqp://u:other@b/v")
    with pytest.raises(ValidationError) as caught:
        ServiceSettings()
    assert "s3cret" not in str(caught.value) and "other" not in str(caught.value)


@given(st.integers(1, 12), st.data())
def test_failover_tries_every_node_once_the_next_one_first(count: int, data: st.DataObject
                                                          ) -> None:
    after = data.draw(st.integers(0, count - 1))
    order = failover_order(count, after)
    assert sorted(order) == list(range(count))
    assert order[0] == (after + 1) % count and order[-1] == after


@given(st.integers(1, 12), st.integers(0, 2**32))
def test_the_first_node_is_one_of_the_list(count: int, seed: int) -> None:
    assert 0 <= first_node(count, random.Random(seed)) < count


def test_processes_spread_over_the_nodes() -> None:
    rng = random.Random(17)
    assert {first_node(3, rng) for _ in range(60)} == {0, 1, 2}
