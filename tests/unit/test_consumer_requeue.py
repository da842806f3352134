"""How long a consumer holds a message whose handler failed before requeueing it."""

from __future__ import annotations

from shared.broker import REQUEUE_MAX, requeue_delay
from shared.topology import DELIVERY_LIMIT


def test_a_failed_message_is_held_longer_each_time_it_comes_back() -> None:
    delays = [requeue_delay(n) for n in range(DELIVERY_LIMIT + 1)]
    assert delays[0] > 0 and delays == sorted(delays) and max(delays) == REQUEUE_MAX
    # a dependency down for several seconds does not use up the delivery limit
    assert 8 <= sum(delays[:DELIVERY_LIMIT]) <= 30
    assert requeue_delay(-1) == delays[0] and requeue_delay(10**6) == REQUEUE_MAX
