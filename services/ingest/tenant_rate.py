"""The events-per-second quota of each tenant (DIHYA_INGEST_TENANT_EVENTS_PER_SECOND), one
budget for both doors (HTTP and AMQP) — and, on PostgreSQL, for every ingest replica.

On PostgreSQL each event is one atomic statement on the tenant's row of ``tenant_rates`` (the
GCRA of :class:`services.ingest.tenants.Gcra`, computed by the database on its own clock): N
replicas grant a tenant the quota together, not N times it. On SQLite (one replica) the
buckets stay in memory (:class:`services.ingest.tenants.TenantRate`). If the database cannot
answer, the replica's own bucket decides (logged): an outage neither stops every tenant's
events nor lets them through unmetered.
"""

from __future__ import annotations

import time
from typing import Final

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.tenants import Gcra, TenantRate

log = structlog.get_logger("dihya.ingest.tenant_rate")

_TAKE: Final = sa.text("""
INSERT INTO tenant_rates AS r (tenant_id, tat)
VALUES (:tenant, extract(epoch FROM now()) + :interval)
ON CONFLICT (tenant_id) DO UPDATE
   SET tat = greatest(r.tat, extract(epoch FROM now())) + :interval
 WHERE r.tat <= extract(epoch FROM now()) + :tolerance
RETURNING r.tat
""")
"""Take one event for a tenant (``Gcra.take`` in one statement): a row back means allowed;
none means the tenant's ``tat`` is too far ahead (the row is left as it was)."""
_WAIT: Final = sa.text(
    "SELECT r.tat - extract(epoch FROM now()) - :tolerance FROM tenant_rates r "
    "WHERE r.tenant_id = :tenant")
"""Seconds until a refused tenant may publish again (read only when refused)."""


class TenantQuota:
    """Events per second per tenant: ``await take(tenant)`` — 0 if allowed, else the seconds
    until one would be (nothing taken). ``per_second`` 0 allows everything."""

    def __init__(self, per_second: float, engine: AsyncEngine | None = None) -> None:
        self.per_second = per_second
        self._local = TenantRate(per_second)
        shared = engine is not None and engine.dialect.name == "postgresql"
        self._engine = engine if shared else None
        self._gcra = Gcra.of(per_second) if per_second > 0 else None

    @property
    def shared(self) -> bool:
        """Whether every replica on this database shares the budget (PostgreSQL)."""
        return self._engine is not None

    async def take(self, tenant: str) -> float:
        if self._gcra is None:
            return 0.0
        if self._engine is None:
            return self._local.take(tenant, time.monotonic())
        params = {"tenant": tenant, "interval": self._gcra.interval,
                  "tolerance": self._gcra.tolerance}
        try:
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                if (await conn.execute(_TAKE, params)).first() is not None:
                    return 0.0
                wait = (await conn.execute(_WAIT, params)).scalar_one_or_none()
        except Exception as exc:  # the database is down: this replica's own bucket decides
            log.warning("tenant_quota_local", error=type(exc).__name__)
            return self._local.take(tenant, time.monotonic())
        return max(float(wait or 0.0), 0.001)
