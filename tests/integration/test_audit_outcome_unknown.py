"""A POST whose outcome never came is still audited (issue #17: a deliverer SIGKILLed between
its POST and the outcome's confirm).

The deliverer confirms a ``delivery.started`` before each POST; audit holds it aside and, once
the outcome (``delivery.attempted``, same fact id) is recorded, forgets it. Here audit runs on
the test's own virtual host and database with a 2 s outcome timeout: of three POSTs started,
one reports its outcome, one reports it only after the timeout, one never does. Books: every
started POST has exactly one record; the silent one's says ``unknown``; nothing stays held.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.audit.decisions import UNKNOWN_OUTCOME, UNKNOWN_REASON
from shared.contracts import AuditFact
from shared.db import make_engine
from tests.conftest import wait_for
from tests.integration.test_audit_service import (  # noqa: F401 - the broker fixture
    Audit,
    Broker,
    broker,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration

TIMEOUT = 2.0


def started(run: str, n: int) -> AuditFact:
    return AuditFact(id=f"fct_{run}_{n}", kind="delivery.started",
                     occurred_at=datetime.now(UTC), service="deliverer",
                     event_id=f"evt_{run}_{n}", endpoint_id=f"ep_{run}",
                     delivery_id=f"dlv_{run}_{n}", attempt=1, url="https://example.test/hook")


def outcome(fact: AuditFact) -> AuditFact:
    return fact.model_copy(update={"kind": "delivery.attempted", "outcome": "delivered",
                                   "status_code": 200, "reason": "ok", "duration_ms": 3.5,
                                   "details": {"next": "done"}})


async def held(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.text(
                "SELECT count(*) FROM started_attempts"))).scalar_one())
    finally:
        await engine.dispose()


async def test_a_post_without_outcome_is_recorded_as_unknown_once(
        amqp_url: str, database_url: str,
        broker: Broker) -> None:  # noqa: F811 - the fixture imported above
    run = uuid.uuid4().hex[:8]
    reported, late, silent = (started(run, n) for n in range(3))
    settings = settings_for(amqp_url, database_url, outcome_timeout=TIMEOUT)
    async with running(settings) as audit:
        await broker.send_facts([reported, late, silent])
        await broker.send_facts([outcome(reported)])

        async def recorded(n: int) -> bool:
            return len(await attempts(audit, run)) >= n

        await wait_for(lambda: recorded(3), timeout=60)  # the outcome, then two unknowns
        await broker.send_facts([outcome(late), reported])  # too late; a started again
        sentinel = outcome(started(run, 9))
        await broker.send_facts([sentinel])
        await wait_for(lambda: recorded(4), timeout=30)  # the sentinel: the rest came before
        records = {r["id"]: r for r in await attempts(audit, run)}

        async def none_held() -> bool:  # the started sent again is swept, as a duplicate
            return await held(database_url) == 0

        await wait_for(none_held, timeout=30)
        records_after = {r["id"] for r in await attempts(audit, run)}
        leftover = await held(database_url)
    unknown = [r for r in records.values() if r["outcome"] == UNKNOWN_OUTCOME]
    print(f"\nbooks: started 3 (+1 sentinel), outcomes sent 2 (1 late), records "
          f"{len(records)}, unknown {len(unknown)}, still held {leftover}")
    assert set(records) == {reported.id, late.id, silent.id, sentinel.id}
    assert records[reported.id]["outcome"] == "delivered"
    for fact in (late, silent):
        record = records[fact.id]
        assert (record["outcome"], record["reason"], record["service"]) == (
            UNKNOWN_OUTCOME, UNKNOWN_REASON, "audit")
        assert record["details"]["outcome_unknown"] is True
        assert (record["delivery_id"], record["attempt"]) == (fact.delivery_id, 1)
    assert leftover == 0 and records_after == set(records)


async def attempts(audit: Audit, run: str) -> list[dict[str, object]]:
    return await audit.records(kind="delivery.attempted", endpoint_id=f"ep_{run}")
