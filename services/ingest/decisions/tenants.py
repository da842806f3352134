"""Tenants: the pure decisions (no I/O) — whose endpoints an event reaches, what a
tenant-scoped token may see, and the per-tenant event rate.

A platform puts Dihya in front of its customers; each customer is a *tenant*. Every endpoint
belongs to exactly one tenant; an event names its tenant (``tenant``: id or external id) and
fans out to that tenant's endpoints only, or asks for every tenant explicitly
(``all_tenants: true``). Cross-tenant delivery is impossible by construction: fan-out first
narrows the endpoints to the event's scope (:func:`in_scope`), and only then matches patterns.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from services.ingest.decisions import Endpoint, HeldJob, hold, plan
from shared.contracts import DeliveryJob, Event, Role

TENANT_ROLES: Final[tuple[Role, ...]] = ("tenant_admin", "tenant_viewer")
"""Roles whose tokens act within one tenant only."""


@dataclass(frozen=True)
class AllTenants:
    """The scope of a platform-wide event (``all_tenants: true``)."""


ALL_TENANTS: Final = AllTenants()

Scope = str | AllTenants
"""An event's audience: one tenant id (``ten_…``), or every tenant."""


@dataclass(frozen=True)
class TenantRefusal:
    """Why an event has no scope."""

    reason: Literal["tenant_missing", "tenant_conflict", "unknown_tenant"]
    error: str


def requested(event: Event, default_tenant: str | None) -> str | AllTenants | TenantRefusal:
    """The tenant reference an event asks for (id or external id, still to be resolved),
    :data:`ALL_TENANTS`, or why it names none.

    ``default_tenant`` (``DIHYA_DEFAULT_TENANT``) stands in for a missing ``tenant``: it keeps
    the publishers of a single-tenant deployment working unchanged."""
    if event.all_tenants:
        if event.tenant is not None:
            return TenantRefusal("tenant_conflict",
                                 "tenant and all_tenants: name one tenant, or ask for all")
        return ALL_TENANTS
    if event.tenant is not None:
        return event.tenant
    if default_tenant:
        return default_tenant
    return TenantRefusal("tenant_missing",
                         "tenant: required (a tenant id or external id), or all_tenants: true "
                         "for a platform-wide event")


def in_scope(scope: Scope, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The endpoints an event of ``scope`` may reach: its tenant's, or all of them for a
    platform-wide event. Fan-out (:func:`~services.ingest.decisions.plan`, ``hold``) only ever
    sees this list."""
    if isinstance(scope, AllTenants):
        return list(endpoints)
    return [ep for ep in endpoints if ep.tenant_id == scope]


def fan_out(event: Event, scope: Scope, endpoints: Iterable[Endpoint]
            ) -> tuple[list[DeliveryJob], list[HeldJob]]:
    """The jobs (enabled endpoints) and held deliveries (disabled ones) an event of ``scope``
    owes: its tenant's endpoints whose patterns select its type — never another tenant's."""
    mine = in_scope(scope, endpoints)
    return plan(event, mine), hold(event, mine)


def scope_of(role: Role, tenant: str | None) -> str | None:
    """The tenant a caller is confined to (``None``: a platform role sees every tenant).

    A tenant role without a tenant cannot happen through the API; if a grant ever arrives that
    way it is confined to a tenant id no tenant has, so it sees nothing."""
    if role in TENANT_ROLES:
        return tenant or "ten_"
    return None


def visible(confined_to: str | None, owner: str) -> bool:
    """May a caller confined to ``confined_to`` see an object of tenant ``owner``?"""
    return confined_to is None or confined_to == owner


@dataclass
class _Bucket:
    tokens: float
    at: float


class TenantRate:
    """Events per second per tenant: a token bucket per tenant (burst = one second's worth).

    Memory is bounded whatever the tenant count: at most ``max_tenants`` buckets are kept,
    the least recently used forgotten (a forgotten tenant starts with a full bucket, which
    errs on the side of accepting). No per-tenant metric label (100,000s of tenants)."""

    def __init__(self, per_second: float, *, max_tenants: int = 100_000) -> None:
        self.per_second = per_second
        self._max = max_tenants
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, tenant: str, now: float) -> float:
        """Take one event for ``tenant`` at monotonic time ``now``: 0 if allowed, else the
        seconds until one would be (nothing taken). ``per_second`` 0 allows everything."""
        if self.per_second <= 0:
            return 0.0
        burst = max(self.per_second, 1.0)
        bucket = self._buckets.pop(tenant, None)
        if bucket is None:
            bucket = _Bucket(tokens=burst, at=now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * self.per_second)
            bucket.at = now
        self._buckets[tenant] = bucket
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.per_second


GCRA_SLACK: Final = 1e-6
"""Seconds added to the tolerance, so the sums of float intervals do not refuse the last event
of a burst by a rounding error (1e-14 s)."""


@dataclass(frozen=True)
class Gcra:
    """The same quota as :class:`TenantRate`, as a generic cell rate algorithm, for a state
    kept outside the process (one number per tenant, its *theoretical arrival time* ``tat``):
    an event at ``now`` is allowed when ``tat <= now + tolerance``, and then
    ``tat = max(tat, now) + interval``; refused, it may come back ``tat - now - tolerance``
    seconds later."""

    interval: float
    """Seconds between events at the quota."""
    tolerance: float
    """How far ahead of ``now`` ``tat`` may be: the burst (one second's worth) less one."""

    @classmethod
    def of(cls, per_second: float) -> Gcra:
        """The GCRA of ``per_second`` (> 0) events per second, bursts of one second's worth
        (at least one event), as :class:`TenantRate`."""
        interval = 1.0 / per_second
        return cls(interval=interval,
                   tolerance=(max(per_second, 1.0) - 1.0) * interval + GCRA_SLACK)

    def take(self, tat: float | None, now: float) -> tuple[float, float]:
        """``(wait, new tat)`` for an event at ``now`` against ``tat`` (``None``: the
        tenant's first event): wait 0 means allowed."""
        if tat is not None and tat > now + self.tolerance:
            return tat - now - self.tolerance, tat
        return 0.0, max(tat if tat is not None else now, now) + self.interval


LOCAL_SUMMARY_EVERY: Final = 30.0
"""Seconds between two summaries while the shared quota cannot be taken (one line per event
would flood the log during an outage at thousands of events a second)."""


@dataclass(frozen=True)
class LocalSpell:
    """A spell of events judged by the replica's own bucket because the shared quota (the
    database) could not answer: when it began, when it was last logged, and how many events
    were judged locally since then and in all."""

    began: float
    said_at: float
    unsaid: int = 0
    judged: int = 1


@dataclass(frozen=True)
class QuotaNote:
    """A log line to write: its event name, level and fields."""

    event: str
    level: Literal["warning", "info"]
    fields: dict[str, float | int]


def judged_locally(spell: LocalSpell | None, now: float,
                   every: float = LOCAL_SUMMARY_EVERY) -> tuple[LocalSpell, QuotaNote | None]:
    """One more event judged locally at monotonic ``now``: the spell after it, and what to
    log — the first of a spell at once (``tenant_quota_local``), then one summary at most
    every ``every`` seconds (``tenant_quota_still_local``, with the events judged locally
    since the last line), nothing in between."""
    if spell is None:
        return LocalSpell(began=now, said_at=now), QuotaNote("tenant_quota_local", "warning", {})
    judged = spell.judged + 1
    if now - spell.said_at < every:
        return LocalSpell(spell.began, spell.said_at, spell.unsaid + 1, judged), None
    note = QuotaNote("tenant_quota_still_local", "warning", {
        "judged_locally": spell.unsaid + 1, "judged_locally_total": judged,
        "for_seconds": round(now - spell.began, 1)})
    return LocalSpell(spell.began, now, 0, judged), note


def shared_again(spell: LocalSpell | None, now: float) -> QuotaNote | None:
    """A shared take succeeded at ``now``: the line that ends a spell (``None`` if there was
    none), with how long it lasted and how many events were judged locally in it."""
    if spell is None:
        return None
    return QuotaNote("tenant_quota_shared_again", "info", {
        "judged_locally": spell.unsaid, "judged_locally_total": spell.judged,
        "for_seconds": round(now - spell.began, 1)})


def retry_after(wait: float) -> str:
    """A ``Retry-After`` header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait)))
