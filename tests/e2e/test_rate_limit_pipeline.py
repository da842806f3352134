"""A rate-limited endpoint end to end: the API takes the limit, ingest puts it on every job, the
signer passes it on, the deliverer paces the endpoint (the four services as real processes)."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from demo.receiver import Delivery, Receiver
from tests.e2e.conftest import Api

pytestmark = pytest.mark.integration

EVENTS = 20


async def test_a_rate_limited_endpoint_is_paced_and_the_other_is_not(
        api: Api, receiver: Receiver) -> None:
    loop = asyncio.get_running_loop()
    arrived: dict[str, list[float]] = {"paced-e2e": [], "unpaced-e2e": []}

    def note(delivery: Delivery) -> None:
        if delivery.path in arrived:
            arrived[delivery.path].append(loop.time())

    receiver.on_delivery = note
    try:
        _, paced = await api.call("POST", "ingest", "/v1/endpoints", api.system.admin_token, {
            "url": receiver.url("paced-e2e"), "events": ["incident.*"],
            "rate_limit": {"per_second": 4}}, expect=201)
        receiver.secrets["paced-e2e"] = paced["secret"]
        assert paced["rate_limit"] == {"per_second": 4, "burst": 1}
        await api.endpoint(receiver, "unpaced-e2e", ["incident.*"])
        ids = await asyncio.gather(*(api.publish({"event": "incident.security",
                                                  "data": {"n": n}}) for n in range(EVENTS)))
        got = await receiver.wait(lambda ds: {d.json["id"] for d in ds
                                              if d.path == "paced-e2e"} >= set(ids), 90)
    finally:
        receiver.on_delivery = None
    paced_got = [d for d in got if d.path == "paced-e2e"]
    times, other = sorted(arrived["paced-e2e"]), sorted(arrived["unpaced-e2e"])
    worst = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))
    seen = [d.json["id"] for d in paced_got]
    print(f"\nbooks: accepted {EVENTS}, paced endpoint delivered {len(set(seen))} (duplicates "
          f"same id {len(seen) - len(set(seen))}, lost {len(set(ids) - set(seen))}) over "
          f"{times[-1] - times[0]:.1f} s, at most {worst} in any 1 s window; the other endpoint "
          f"got {len(other)} within {other[-1] - other[0]:.1f} s")
    assert all(d.guide_ok and d.standard_ok is not False for d in paced_got)
    assert worst <= 4
    assert times[-1] - times[0] >= (EVENTS - 1) / 4 * 0.9
    assert len(other) >= EVENTS and other[EVENTS - 1] < times[EVENTS // 2]  # not held to 4/s
