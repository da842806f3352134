"""Audit behind a deep queue of delivery-fact batches holds a bounded number of bytes in
process (services/audit/budget.py), and the acceptances those facts wait for still get in.

The prefetch counts messages, and a message is a batch of up to 1,000 facts: before the
budget, a backlog of batches put up to prefetch x batch facts in memory at once (audit's RSS
passed 680 MiB in the benchmark's overload phases).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta

import pytest

from shared import topology
from shared.contracts import AuditFact, AuditFactBatch
from tests.conftest import wait_for
from tests.integration.test_audit_service import (
    BASE,
    Broker,
    broker,  # noqa: F401 (the fixture)
    running,
    settings_for,
)

pytestmark = pytest.mark.integration

EVENTS = 60
FACTS_PER_EVENT = 100
BUDGET = 64 * 1024
DELIVERY_HELD = 'dihya_audit_fact_bytes_in_process{facts="delivery"}'


def gauge(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found[1])


def attempts(run: str, event: int) -> AuditFactBatch:
    return AuditFactBatch(facts=[
        AuditFact(id=f"fct_{run}_{event}_{n}", kind="delivery.attempted",
                  occurred_at=BASE + timedelta(seconds=event), service="deliverer",
                  event_id=f"evt_{run}_{event}", event_type="template.created",
                  endpoint_id=f"ep_{run}", delivery_id=f"dlv_{run}_{event}_{n}", attempt=1,
                  url="https://example.test/hook", outcome="delivered", status_code=200,
                  duration_ms=12.5)
        for n in range(FACTS_PER_EVENT)])


def accepted(run: str, event: int) -> AuditFact:
    return AuditFact(id=f"fct_{run}_{event}_accepted", kind="event.accepted",
                     occurred_at=BASE + timedelta(seconds=event), service="ingest",
                     event_id=f"evt_{run}_{event}", event_type="template.created",
                     details={"subject": f"user_{run}"})


async def test_a_backlog_of_fact_batches_is_held_within_the_budget_and_drains(
        amqp_url: str, database_url: str, broker: Broker) -> None:  # noqa: F811
    run = uuid.uuid4().hex[:8]
    settings = settings_for(amqp_url, database_url, acceptance_wait=60.0,
                            max_fact_bytes_in_process=BUDGET)
    async with running(settings) as audit:
        # the counter is the process's: other in-process audits of the suite moved it
        _, text = await audit.get("/metrics")
        early_before = gauge(text, "dihya_audit_stored_before_acceptance_total")
        # every attempt first, their acceptances not yet published: they all wait
        for event in range(EVENTS):
            await broker.publisher.send(topology.AUDIT_EXCHANGE, "delivery.attempted",
                                        attempts(run, event))
        waiting: list[float] = []

        async def some_wait() -> bool:
            _, text = await audit.get("/metrics")
            waiting.append(gauge(text, "dihya_audit_facts_awaiting_acceptance"))
            for facts in ("delivery", "other"):
                held = gauge(text, f'dihya_audit_fact_bytes_in_process{{facts="{facts}"}}')
                assert held <= BUDGET
            return waiting[-1] > 0

        await wait_for(some_wait, timeout=20)
        for _ in range(20):  # watch it a while: it stays within the budget
            await some_wait()
            await asyncio.sleep(0.05)
        # one batch (~100 facts) fits the budget at a time, never the whole backlog
        most = max(waiting)
        print(f"books: {EVENTS * FACTS_PER_EVENT} attempt facts queued, at most {most:.0f} "
              f"held waiting for their acceptance (budget {BUDGET} bytes)")
        assert 0 < most <= 2 * FACTS_PER_EVENT

        # the acceptances are not held back by the budget the waiting attempts fill
        for event in range(EVENTS):
            await broker.publisher.send(topology.AUDIT_EXCHANGE, "event.accepted",
                                        accepted(run, event))

        span = {"since": BASE.isoformat(),
                "until": (BASE + timedelta(seconds=EVENTS)).isoformat()}

        async def all_stored() -> bool:
            return len(await audit.records(**span)) >= EVENTS * (FACTS_PER_EVENT + 1)

        await wait_for(all_stored, timeout=120)
        _, text = await audit.get("/metrics")
        early = gauge(text, "dihya_audit_stored_before_acceptance_total") - early_before
        stored = len(await audit.records(**span))
        print(f"books: stored {stored} of {EVENTS * (FACTS_PER_EVENT + 1)}, stored before "
              f"their acceptance {early:.0f}, bytes held at the end "
              f"{gauge(text, DELIVERY_HELD):.0f}")
        assert early == 0
        assert stored == EVENTS * (FACTS_PER_EVENT + 1)
        assert gauge(text, DELIVERY_HELD) == 0
        assert gauge(text, 'dihya_audit_fact_bytes_in_process{facts="other"}') == 0
