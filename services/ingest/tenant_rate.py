"""The events-per-second quota of each tenant (DIHYA_INGEST_TENANT_EVENTS_PER_SECOND), one
budget for both doors (HTTP and AMQP) — and, on PostgreSQL, for every ingest replica.

On PostgreSQL each tenant's budget is its row of ``tenant_rates`` (the GCRA of
:class:`services.ingest.decisions.tenants.Gcra`, computed by the database on its own clock),
taken by one atomic statement: N replicas grant a tenant the quota together, not N times it.
Takes in flight at once share a statement (one per distinct tenant and round; a tenant refused
in a batch is refused for the rest of it, its state unchanged). On SQLite (one replica) the
buckets stay in memory (:class:`services.ingest.decisions.tenants.TenantRate`). If the database
cannot answer, the replica's own bucket decides: an outage neither stops every tenant's events
nor lets them through unmetered. Logged without flooding: a warning ``tenant_quota_local`` at
the first event judged locally, a summary ``tenant_quota_still_local`` at most every 30 s while
it lasts, and ``tenant_quota_shared_again`` (info) when a shared take succeeds again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.ingest.decisions.tenants import (
    Gcra,
    LocalSpell,
    TenantRate,
    judged_locally,
    shared_again,
)
from shared.batching import Batcher

log = structlog.get_logger("dihya.ingest.tenant_rate")

TAKE_BATCH = 200
"""Most takes sharing one statement."""
MIN_WAIT = 0.001
"""The wait reported for a refusal whose row vanished meanwhile (tenant offboarded)."""

_TENANTS = sa.bindparam("tenants", type_=ARRAY(sa.String()))
_TAKE: Final = sa.text("""
INSERT INTO tenant_rates AS r (tenant_id, tat)
SELECT u.t, extract(epoch FROM now()) + :interval
  FROM unnest(:tenants) WITH ORDINALITY AS u(t, n) ORDER BY u.n
ON CONFLICT (tenant_id) DO UPDATE
   SET tat = greatest(r.tat, extract(epoch FROM now())) + :interval
 WHERE r.tat <= extract(epoch FROM now()) + :tolerance
RETURNING r.tenant_id
""").bindparams(_TENANTS)
"""Take one event for each of ``tenants`` (distinct, sorted: every replica locks rows in the
same order) — ``Gcra.take`` in one statement: the tenants returned are allowed; for the others
``tat`` is too far ahead, and their rows are left as they were."""
_WAIT: Final = sa.text(
    "SELECT r.tenant_id, r.tat - extract(epoch FROM now()) - :tolerance AS wait "
    "FROM tenant_rates r WHERE r.tenant_id = ANY(:tenants)").bindparams(_TENANTS)
"""Seconds until each refused tenant may publish again (read only for refusals)."""


class TenantQuota:
    """Events per second per tenant: ``await take(tenant)`` — 0 if allowed, else the seconds
    until one would be (nothing taken). ``per_second`` 0 allows everything."""

    def __init__(self, per_second: float, engine: AsyncEngine | None = None) -> None:
        self.per_second = per_second
        self._local = TenantRate(per_second)
        shared = engine is not None and engine.dialect.name == "postgresql"
        self._engine = engine if shared else None
        self._gcra = Gcra.of(per_second) if per_second > 0 else None
        self._batches: Batcher[str, float] = Batcher(self._take_all, size=TAKE_BATCH,
                                                     name="tenant quota")
        self._spell: LocalSpell | None = None
        """The outage being ridden out on the local bucket, if any: what is logged is decided
        by :func:`~services.ingest.decisions.tenants.judged_locally`."""

    @property
    def shared(self) -> bool:
        """Whether every replica on this database shares the budget (PostgreSQL)."""
        return self._engine is not None

    async def take(self, tenant: str) -> float:
        if self._gcra is None:
            return 0.0
        if self._engine is None:
            return self._local.take(tenant, time.monotonic())
        self._batches.start()  # idempotent; here because it needs the running loop
        try:
            wait = await self._batches.submit(tenant)
        except Exception as exc:  # the database is down: this replica's own bucket decides
            now = time.monotonic()
            self._spell, note = judged_locally(self._spell, now)
            if note is not None:
                log.warning(note.event, error=type(exc).__name__, **note.fields)
            return self._local.take(tenant, now)
        if self._spell is not None:
            note = shared_again(self._spell, time.monotonic())
            self._spell = None
            if note is not None:
                log.info(note.event, **note.fields)
        return wait

    async def close(self, grace: float = 5.0) -> None:
        """Finish the takes in flight (before the database closes)."""
        await self._batches.stop(grace)

    async def _take_all(self, tenants: Sequence[str]) -> list[float]:
        assert self._engine is not None and self._gcra is not None
        params = {"interval": self._gcra.interval, "tolerance": self._gcra.tolerance}
        waits: dict[int, float] = {}
        pending = list(enumerate(tenants))
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            while pending:  # a round per take of one tenant in the batch
                first: dict[str, int] = {}
                again: list[tuple[int, str]] = []
                for i, tenant in pending:
                    if tenant in first:
                        again.append((i, tenant))
                    else:
                        first[tenant] = i
                refused = await self._round(conn, sorted(first), params)
                for tenant, i in first.items():
                    waits[i] = refused.get(tenant, 0.0)
                pending = []
                for i, tenant in again:  # refused once, refused for the rest of the batch
                    if tenant in refused:
                        waits[i] = refused[tenant]
                    else:
                        pending.append((i, tenant))
        return [waits[i] for i in range(len(tenants))]

    @staticmethod
    async def _round(conn: AsyncConnection, tenants: list[str], params: dict[str, Any]
                     ) -> dict[str, float]:
        """Take one event for each tenant; the refused ones with their waits."""
        allowed = set((await conn.execute(_TAKE, {**params, "tenants": tenants})).scalars())
        refused = [t for t in tenants if t not in allowed]
        if not refused:
            return {}
        rows = await conn.execute(_WAIT, {**params, "tenants": refused})
        found = {row.tenant_id: max(float(row.wait), MIN_WAIT) for row in rows}
        return {t: found.get(t, MIN_WAIT) for t in refused}
