"""Ingest's HTTP API: endpoints, events, tokens, and the dead-letter store (list failed
deliveries, retry one, recover an endpoint) — aiohttp, described by one route table.

:data:`ROUTES` drives both the router and the OpenAPI document (:mod:`.openapi`), so a route
cannot exist undocumented. Every handler authorizes first, then reads and validates the body:
a caller without the right token learns nothing about what the body should have been.

Consistency with the other services is kept by publishing inside the database transaction:
a row (endpoint, token) is committed only after the broker confirmed the control message that
tells the signer (secret) or the other HTTP services (token grant) about it; if that publish
fails, the transaction rolls back and the caller gets a 503 to retry. Resending stored
deliveries follows the same rule: a row turns ``retried`` only once the broker confirmed its job.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    ValidationError,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ingest import metrics
from services.ingest.catalog import (
    INTERNAL_TYPES,
    Catalog,
    admits,
    load_catalog,
    unknown_message,
)
from services.ingest.consumer import RATE_CHECKED_HEADER
from services.ingest.decisions import (
    ID_RE,
    DeliveryStatus,
    Rejection,
    accepted_fact,
    delivery_id,
    disabled_fact,
    enabled_fact,
    last_attempt,
    peek_type,
    resend,
    retry_fact,
    schedule_ms,
    schedule_seconds,
    screen,
)
from services.ingest.decisions.messages import (
    CursorError,
    decode_cursor,
    encode_cursor,
    log_delivery,
    log_event,
    summarize,
)
from services.ingest.decisions.tenants import (
    TenantRefusal,
    requested,
    retry_after,
    scope_of,
    visible,
)
from services.ingest.message_log import DeliveryRow, EventFilter, MessageLog
from services.ingest.models import (
    MASK,
    AttemptOut,
    DeliveryCounts,
    DeliveryList,
    DeliveryOut,
    DeliveryPage,
    DeliverySummary,
    EndpointCreate,
    EndpointCreated,
    EndpointHealth,
    EndpointHealthOut,
    EndpointList,
    EndpointListItem,
    EndpointOut,
    EndpointPatched,
    EndpointTest,
    EndpointUpdate,
    ErrorBody,
    ErrorDetail,
    EventAccepted,
    EventDetail,
    EventPage,
    EventSummary,
    EventTypeList,
    EventTypeOut,
    HourOut,
    LogDeliveryOut,
    LogStatusField,
    ParkedList,
    ParkedOut,
    PublicKeyOut,
    RecoverAccepted,
    RecoverRequest,
    ResendAccepted,
    RetryAccepted,
    RetryFailedAccepted,
    SecretRotate,
    SecretRotated,
    SubjectErased,
    SubjectEvent,
    SubjectExport,
    TestSent,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    WhoAmI,
    check_ordering,
)
from services.ingest.openapi import Route, document
from services.ingest.settings import Settings
from services.ingest.store import (
    Claim,
    DeliveryRecord,
    EndpointRecord,
    ParkedRecord,
    Store,
    TokenRecord,
)
from services.ingest.tenant_http import TenantApi, tenant_not_found
from services.ingest.tenant_models import (
    PortalExchange,
    PortalOpened,
    PortalSession,
    PortalSessionCreate,
    TenantCreate,
    TenantDeleted,
    TenantList,
    TenantOut,
    TenantUpdate,
)
from services.ingest.tenant_rate import TenantQuota
from services.ingest.tenant_store import TenantStore
from shared import topology
from shared.batching import Batcher
from shared.broker import Publisher, confirm_all
from shared.contracts import (
    AuditFact,
    Contract,
    DeliveryJob,
    EndpointSecret,
    Event,
    Role,
    TokenGrant,
    encode,
    utcnow,
)
from shared.egress import ALLOW_HINT, BlockedAddressError, check_destination
from shared.ids import new_id
from shared.signing_keys import generate_signing_key, public_key_of
from shared.web import (
    REFUSAL_HOOK,
    TOKEN_LOOKUP,
    ApiError,
    Principal,
    ReadinessCheck,
    add_ops_routes,
    authorize,
    bootstrap_lookup,
    error,
    errors_middleware,
    hash_token,
    json_response,
    read_json,
    validation_error,
)

log = structlog.get_logger("dihya.ingest.http")

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_IDEMPOTENCY_KEY = 255
TOKEN_BATCH = 200
"""Most token hashes looked up in one query."""
SETTLE_POLL = 0.05
"""Seconds between looks at an idempotency key whose event's publish is still in flight."""


UNCONFIRMED = "The message broker did not confirm; the request may be incomplete. Retry."
"""The 503's text when the caller gave none (each call site says what did or did not
happen: a lost confirm may hide a message that did arrive)."""


class BrokerUnavailableError(Exception):
    """A publish the request depends on was not confirmed: the caller should retry (503).
    ``outcome`` is the 503's message: what was and was not done, true whether or not the
    unconfirmed message arrived."""

    def __init__(self, routing_key: str, outcome: str = UNCONFIRMED) -> None:
        super().__init__(routing_key)
        self.outcome = outcome


class EventUnconfirmedError(BrokerUnavailableError):
    """An event's publish was not confirmed: it may or may not have been accepted, and a
    retry must carry the same id (the same Idempotency-Key, or the id itself) to stay one
    event."""

    def __init__(self, event_id: str, keyed: bool) -> None:
        super().__init__(event_id)
        self.event_id = event_id
        self.keyed = keyed


class ListQuery(BaseModel):
    """Query parameters of the list operations (cursor pagination by id)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: int = Field(default=100, ge=1, le=1000, description="Items per page.")
    after: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$",
                              description="The `next` of the previous page.")


_TENANT_REF = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
"""A tenant's id or external id, as a query parameter."""


class DeliveryQuery(ListQuery):
    """Query parameters of the delivery list."""

    status: DeliveryStatus = Field(
        default="failed", description="`failed` (default), `held` or `retried`.")


class EndpointListQuery(ListQuery):
    """Query parameters of the endpoint list."""

    tenant: str | None = Field(default=None, max_length=128, pattern=_TENANT_REF,
                               description="Only this tenant's endpoints (id or external id; "
                               "a tenant-scoped token sees only its own anyway).")

    include: Literal["health"] | None = Field(
        default=None, description="`health`: add each endpoint's last 24 hours (success "
        "rate, attempts, last delivery, state, attempts per hour by outcome).")


_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class PageQuery(BaseModel):
    """Cursor paging of the message log (newest first)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cursor: str | None = Field(default=None, max_length=512, pattern=r"^[A-Za-z0-9_-]*$",
                               description="The `next_cursor` of the previous page.")
    limit: int = Field(default=50, ge=1, le=200, description="Items per page.")


class EventQuery(PageQuery):
    """Filters of the message log."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    type_: str | None = Field(default=None, alias="type", max_length=128,
                              pattern=r"^[a-z0-9][a-z0-9_.-]*$",
                              description="Only events of this type (exact).")
    status: LogStatusField | None = Field(
        default=None, description="Only events having a delivery with this status.")
    endpoint: str | None = Field(default=None, pattern=_ID_PATTERN,
                                 description="Only events with a delivery to this endpoint.")
    since: AwareDatetime | None = Field(default=None, description="Received at or after "
                                        "(ISO-8601 with an offset).")
    until: AwareDatetime | None = Field(default=None, description="Received before.")
    tenant: str | None = Field(default=None, max_length=128, pattern=_TENANT_REF,
                               description="Only events with a delivery to this tenant's "
                               "endpoints, counting only those (id or external id; a "
                               "tenant-scoped token sees only its own anyway).")


class LogDeliveryQuery(PageQuery):
    """Filters of the delivery list."""

    status: LogStatusField | None = None
    endpoint: str | None = Field(default=None, pattern=_ID_PATTERN)
    event: str | None = Field(default=None, pattern=_ID_PATTERN, description="An event id.")
    tenant: str | None = Field(default=None, max_length=128, pattern=_TENANT_REF,
                               description="Only deliveries to this tenant's endpoints (id or "
                               "external id; a tenant-scoped token sees only its own anyway).")


RESEND_BATCH = 100
"""Deliveries resent per transaction (their confirms pipelined) by a recover."""


def generate_secret() -> str:
    """A Standard Webhooks style secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def generate_token() -> str:
    """An API token: ``dihya_`` + 32 random bytes, URL-safe base64."""
    return "dihya_" + secrets.token_urlsafe(32)


def _validate(model: type[Any], data: Any, context: Mapping[str, Any] | None = None) -> Any:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _endpoint_out(record: EndpointRecord) -> EndpointOut:
    return EndpointOut(id=record.id, url=record.url, tenant=record.tenant_id,
                       events=list(record.events),
                       description=record.description, status=record.status,
                       created_at=record.created_at, updated_at=record.updated_at,
                       disabled_reason=record.disabled_reason, disabled_at=record.disabled_at,
                       failing_since=record.failing_since,
                       retry_schedule=schedule_seconds(record.retry_schedule_ms),
                       signature_scheme=record.signature_scheme,
                       public_keys=_public_keys_out(record),
                       headers=dict.fromkeys(record.header_names, MASK),
                       rate_limit=record.rate_limit, ordering=record.ordering,
                       ordering_key=record.ordering_key)


def _headers_handover(endpoint_id: str, headers: Mapping[str, str], now: datetime
                      ) -> EndpointSecret:
    """The control message handing an endpoint's custom headers to the signer."""
    return EndpointSecret(endpoint_id=endpoint_id, action="headers", issued_at=now,
                          headers={k: SecretStr(v) for k, v in headers.items()})


def _public_keys_out(record: EndpointRecord) -> list[PublicKeyOut] | None:
    if record.public_keys is None:
        return None
    now = utcnow()
    return [PublicKeyOut(key=key, valid_until=until) for key, until in record.public_keys
            if until is None or until > now]


def _shown(record: EndpointRecord) -> list[JsonValue] | None:
    """The endpoint's retry schedule for an audit fact: seconds, as the API shows it."""
    out = _endpoint_out(record).model_dump(mode="json")["retry_schedule"]
    return None if out is None else list(out)


def _rate_shown(record: EndpointRecord) -> JsonValue:
    """The endpoint's rate limit for an audit fact, as the API shows it."""
    return None if record.rate_limit is None else record.rate_limit.model_dump(mode="json")


def _delivery_out(record: DeliveryRecord) -> DeliveryOut:
    return DeliveryOut(delivery_id=record.delivery_id, endpoint_id=record.endpoint_id,
                       event_id=record.event_id, event_type=record.event_type,
                       status=record.status, reason=record.reason, error=record.error,
                       failed_at=record.failed_at, next_attempt=last_attempt(record.job) + 1,
                       attempts=list(record.job.history), retried_at=record.retried_at,
                       retried_by=record.retried_by)


def _parked_out(record: ParkedRecord) -> ParkedOut:
    return ParkedOut(id=record.id, queue=record.queue, reason=record.reason, error=record.error,
                     headers=record.headers, body=record.body.decode("utf-8", "replace"),
                     body_base64=base64.b64encode(record.body).decode(),
                     parked_at=record.parked_at)


def _token_out(record: TokenRecord) -> TokenOut:
    return TokenOut(id=record.id, role=record.role, tenant=record.tenant_id,
                    description=record.description,
                    created_at=record.created_at, revoked_at=record.revoked_at)


def _body(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return json_response(model.model_dump(mode="json"), status=status, headers=headers)


class IngestApi(TenantApi):
    """Request handlers; state is the store and the publisher shared with the consumer."""

    def __init__(self, settings: Settings, store: Store, publisher: Publisher,
                 catalog: Catalog | None = None, message_log: MessageLog | None = None,
                 tenants: TenantStore | None = None, rate: TenantQuota | None = None
                 ) -> None:
        self.settings = settings
        self.tenants = (tenants if tenants is not None or store is None  # None: docs only
                        else TenantStore(store.engine, ttl=settings.endpoint_cache_ttl))
        # shared with the consumer: one budget per tenant whichever door its events take
        self._rate = rate or TenantQuota(settings.tenant_events_per_second,
                                         store.engine if store is not None else None)
        self.catalog = catalog or load_catalog(settings.event_catalog, settings.tzm_script)
        self.store = store
        self.log: MessageLog | None = (
            message_log if message_log is not None
            else MessageLog(store.engine) if store is not None else None)
        self.publisher = publisher
        self._openapi: bytes | None = None
        # Requests in flight at once share one token query (no cache: a revocation holds at
        # once, on every replica).
        self._principals: Batcher[str, Principal | None] = Batcher(
            self._look_up_principals, size=TOKEN_BATCH, name="token look-up")

    async def close(self, grace: float = 5.0) -> None:
        """Finish pending token look-ups (after the HTTP server stopped)."""
        await self._principals.stop(grace)

    # -- broker helpers -------------------------------------------------------------------

    async def _announce(self, exchange: str, routing_key: str, model: Contract,
                        headers: Mapping[str, Any] | None = None, *,
                        outcome: str = UNCONFIRMED) -> None:
        """Publish a message the request cannot succeed without (confirm awaited); unconfirmed,
        the 503 says ``outcome``."""
        try:
            await self.publisher.send(exchange, routing_key, model, headers=headers)
        except Exception as exc:
            log.error("publish_failed", exchange=exchange, routing_key=routing_key,
                      error=type(exc).__name__)
            raise BrokerUnavailableError(routing_key, outcome) from exc

    async def _announce_all(self, messages: list[tuple[str, Contract]]) -> None:
        """Publish control messages a change cannot commit without (confirms pipelined, in
        chunks); any failure is a :class:`BrokerUnavailableError`."""
        for start in range(0, len(messages), RESEND_BATCH):
            chunk = messages[start:start + RESEND_BATCH]
            try:
                await confirm_all([self.publisher.send(topology.CONTROL_EXCHANGE, key, model)
                                   for key, model in chunk])
            except Exception as exc:
                log.error("publish_failed", exchange=topology.CONTROL_EXCHANGE,
                          error=type(exc).__name__)
                raise BrokerUnavailableError(topology.CONTROL_EXCHANGE) from exc

    # -- tenant scoping -------------------------------------------------------------------

    async def _own_endpoint(self, principal: Principal, endpoint_id: str,
                            conn: AsyncConnection | None = None) -> EndpointRecord:
        """The endpoint, if the caller may see it; else 404, as if it did not exist (a
        tenant-scoped token learns nothing about another tenant's objects)."""
        record = await self.store.get_endpoint(endpoint_id, conn)
        if record is None or not visible(scope_of(principal.role, principal.tenant),
                                         record.tenant_id):
            raise _not_found("endpoint", endpoint_id)
        return record

    async def _tenant_filter(self, principal: Principal, ref: str | None) -> str | None:
        """The tenant a list is narrowed to: the one ``ref`` names (id or external id), or
        else the token's own; ``None``: every tenant. One rule for every list, so an unknown
        tenant and another tenant's (asked by a tenant-scoped token) get the same 404 — the
        token learns nothing about which tenants exist."""
        confined = scope_of(principal.role, principal.tenant)
        if ref is None:
            return confined
        named = await self.tenants.resolve(ref)
        if named is None or not visible(confined, named):
            raise tenant_not_found(ref)
        return named

    async def _tenant_of_new(self, principal: Principal, ref: str | None) -> str:
        """The tenant a new endpoint belongs to: the token's own (a tenant-scoped token may
        name no other: 404), else ``ref`` or DIHYA_DEFAULT_TENANT (422 when neither)."""
        confined = scope_of(principal.role, principal.tenant)
        if confined is not None:
            if ref is not None and await self.tenants.resolve(ref) != confined:
                raise tenant_not_found(ref)
            return confined
        ref = ref or self.settings.default_tenant
        if ref is None:
            raise error(422, "validation_failed", "The request body is not valid.",
                        [{"field": "tenant", "message": "required: the endpoint's tenant "
                          "(id or external id); no DIHYA_DEFAULT_TENANT is set"}])
        tenant = await self.tenants.resolve(ref)
        if tenant is None:
            raise error(422, "unknown_tenant", f"No tenant {ref[:128]!r}.",
                        [{"field": "tenant", "message": "no tenant with this id or "
                          "external id"}])
        return tenant

    async def audit(self, fact: AuditFact) -> None:
        """Publish an audit fact about something already done; a failure is logged, not
        raised, because the change is committed and its one-time secret already owed."""
        try:
            await self.publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
        except Exception as exc:
            log.error("audit_publish_failed", kind=fact.kind, fact_id=fact.id,
                      endpoint_id=fact.endpoint_id, error=type(exc).__name__)

    def _fact(self, kind: Any, actor: str | None, **fields: Any) -> AuditFact:
        return AuditFact(id=new_id("fct"), kind=kind, occurred_at=utcnow(), service="ingest",
                         actor=actor, **fields)

    async def refused(self, request: web.Request, principal: Principal | None, reason: str
                      ) -> None:
        """REFUSAL_HOOK: audit a refused access (who and what, never the token)."""
        actor = principal.token_id if principal is not None else None
        await self.audit(self._fact("access.refused", actor, reason=reason,
                                    details={"path": request.path[:512],
                                             "method": request.method}))

    async def lookup(self, token_hash: str) -> Principal | None:
        self._principals.start()  # idempotent; here because it needs the running loop
        return await self._principals.submit(token_hash)

    async def _look_up_principals(self, hashes: Sequence[str]) -> list[Principal | None]:
        found = await self.store.principals(set(hashes))
        return [found.get(h) for h in hashes]

    def _limits(self) -> dict[str, int]:
        return {"secret_min_length": self.settings.secret_min_length}

    async def _json(self, request: web.Request) -> Any:
        return await read_json(request, self.settings.max_body_bytes)

    # -- endpoints ------------------------------------------------------------------------

    async def create_endpoint(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "tenant_admin")
        body: EndpointCreate = _validate(EndpointCreate, await self._json(request),
                                         self._limits())
        tenant = await self._tenant_of_new(principal, body.tenant)
        await self._check_destination(body.url)
        ed25519 = body.signature_scheme == "ed25519"
        secret = generate_signing_key() if ed25519 else body.secret or generate_secret()
        now = utcnow()
        record = EndpointRecord(id=new_id("ep"), url=body.url, events=tuple(body.events),
                                description=body.description, status="enabled",
                                created_at=now, updated_at=now,
                                retry_schedule_ms=schedule_ms(body.retry_schedule),
                                signature_scheme=body.signature_scheme,
                                public_keys=((public_key_of(secret), None),) if ed25519
                                else None,
                                header_names=tuple(body.headers or {}),
                                rate_limit=body.rate_limit, tenant_id=tenant,
                                ordering=body.ordering, ordering_key=body.ordering_key)
        # custom headers ride with the secret: the first job finds both in the keystore
        handover = EndpointSecret(
            endpoint_id=record.id, action="set", secret=SecretStr(secret), issued_at=now,
            headers={k: SecretStr(v) for k, v in body.headers.items()} if body.headers
            else None)
        published = False
        try:
            async with self.store.transaction() as conn:
                if not await self.tenants.lock(conn, tenant):  # held until the commit
                    raise tenant_not_found(tenant)
                quota = self.settings.tenant_max_endpoints
                if quota and await self.tenants.count_endpoints(conn, tenant) >= quota:
                    raise error(409, "tenant_quota_exceeded",
                                f"The tenant has {quota} endpoints, the most it may have "
                                "(DIHYA_INGEST_TENANT_MAX_ENDPOINTS).")
                await self.store.insert_endpoint(conn, record)
                await self._announce(
                    topology.CONTROL_EXCHANGE, "secret.set", handover,
                    outcome="The message broker did not confirm the endpoint's secret: no "
                    "endpoint was created (the signer may keep a secret no endpoint uses). "
                    "Retry.")
                published = True
        except Exception:
            if published:  # the commit failed after the signer got the secret: take it back
                await self._withdraw_secret(record.id)
            raise
        log.info("endpoint_created", endpoint_id=record.id, actor=principal.token_id)
        await self.audit(self._fact("endpoint.created", principal.token_id,
                                    endpoint_id=record.id, url=record.url, tenant=tenant,
                                    details={"events": list(record.events),
                                             "retry_schedule": _shown(record),
                                             "signature_scheme": record.signature_scheme,
                                             "header_names": list(record.header_names),
                                             "rate_limit": _rate_shown(record),
                                             "ordering": record.ordering,
                                             "ordering_key": record.ordering_key}))
        out = EndpointCreated(**_endpoint_out(record).model_dump(),
                              secret=None if ed25519 else secret)
        return _body(out, 201)

    async def _check_destination(self, url: str) -> None:
        """422 for a URL deliveries may not reach (SSRF policy; the deliverer checks again)."""
        try:
            await check_destination(url, self.settings.allowed,
                                    https_only=self.settings.https_only)
        except BlockedAddressError as exc:  # name the setting that allows it (issue #19)
            raise error(422, "validation_failed", "The request body is not valid.",
                        [{"field": "url",
                          "message": f"refused destination: {exc}; {ALLOW_HINT}"}]) from None
        except ValueError as exc:
            raise error(422, "validation_failed", "The request body is not valid.",
                        [{"field": "url", "message": f"refused destination: {exc}"}]) from None

    async def _withdraw_secret(self, endpoint_id: str) -> None:
        try:
            await self.publisher.send(topology.CONTROL_EXCHANGE, "secret.delete", EndpointSecret(
                endpoint_id=endpoint_id, action="delete", issued_at=utcnow()))
        except Exception as exc:
            log.error("secret_withdraw_failed", endpoint_id=endpoint_id,
                      error=type(exc).__name__)

    async def list_endpoints(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "viewer", "tenant_admin",
                                    "tenant_viewer")
        query: EndpointListQuery = _validate(EndpointListQuery, dict(request.query))
        tenant = await self._tenant_filter(principal, query.tenant)
        records = await self.store.list_endpoints(limit=query.limit + 1, after=query.after,
                                                  tenant=tenant)
        page = records[: query.limit]
        nxt = page[-1].id if len(records) > query.limit else None
        health = await self._health(page) if query.include == "health" else {}
        items = [EndpointListItem(**_endpoint_out(r).model_dump(), health=health.get(r.id))
                 for r in page]
        return _body(EndpointList(items=items, next=nxt))

    async def _health(self, records: Sequence[EndpointRecord]) -> dict[str, EndpointHealth]:
        log_store = self._message_log()
        ids = [r.id for r in records]
        now = utcnow()
        hourly = await log_store.hourly(ids, now)
        last = await log_store.last_delivered(ids)
        out: dict[str, EndpointHealth] = {}
        for record in records:
            summary = summarize(hourly.get(record.id, []), now, status=record.status,
                                failing_since=record.failing_since,
                                last_delivery_at=last.get(record.id,
                                                          record.last_delivered_at))
            out[record.id] = EndpointHealth(
                state=summary.state, attempts=summary.attempts, delivered=summary.delivered,
                failed=summary.failed, success_rate=summary.success_rate,
                last_delivery_at=summary.last_delivery_at,
                hours=[HourOut(hour=h.hour, delivered=h.delivered, failed=h.failed)
                       for h in summary.hours])
        return out

    async def endpoint_health(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "viewer", "tenant_admin",
                                    "tenant_viewer")
        endpoint_id = _ident(request, "endpoint")
        record = await self._own_endpoint(principal, endpoint_id)
        health = (await self._health([record]))[endpoint_id]
        return _body(EndpointHealthOut(endpoint_id=endpoint_id, **health.model_dump()))

    async def get_endpoint(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "viewer", "tenant_admin",
                                    "tenant_viewer")
        endpoint_id = _ident(request, "endpoint")
        record = await self._own_endpoint(principal, endpoint_id)
        return _body(_endpoint_out(record))

    async def update_endpoint(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "tenant_admin")
        endpoint_id = _ident(request, "endpoint")
        body: EndpointUpdate = _validate(EndpointUpdate, await self._json(request))
        await self._own_endpoint(principal, endpoint_id)
        if body.url is not None:
            await self._check_destination(body.url)
        changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
        now = utcnow()
        async with self.store.transaction() as conn:
            before = await self.store.get_endpoint(endpoint_id, conn)
            if before is None:
                raise _not_found("endpoint", endpoint_id)
            values = {**changes, "updated_at": now}
            try:  # the order and the rate limit as they will be
                check_ordering(values.get("ordering", before.ordering),
                               values.get("ordering_key", before.ordering_key),
                               values.get("rate_limit", before.rate_limit))
            except ValueError as exc:
                raise error(422, "validation_failed", "The request body is not valid.",
                            [{"field": "(body)", "message": str(exc)}]) from None
            if "retry_schedule" in values:  # seconds in the API, milliseconds in the store
                values["retry_schedule_ms"] = schedule_ms(values.pop("retry_schedule"))
            if "headers" in values:  # names here, values only in the signer's keystore
                headers = values.pop("headers") or {}
                values["header_names"] = tuple(headers)
                await self._announce(
                    topology.CONTROL_EXCHANGE, "secret.headers",
                    _headers_handover(endpoint_id, headers, now),
                    outcome="The message broker did not confirm the new headers: the "
                    "endpoint was not changed, but the signer may already send them. Retry "
                    "the same update.")
            enabling = changes.get("status") == "enabled" and before.status != "enabled"
            disabling = changes.get("status") == "disabled" and before.status != "disabled"
            if enabling:  # a fresh start: the old failing run no longer counts
                values.update(failing_since=None, disabled_reason=None, disabled_at=None,
                              health_reset_at=now, consecutive_failures=0)
            if disabling:
                values.update(disabled_reason="manual", disabled_at=now)
            record = await self.store.update_endpoint(conn, endpoint_id, values)
            held = await self.store.count_held(endpoint_id, conn)
        if record is None:
            raise _not_found("endpoint", endpoint_id)
        log.info("endpoint_updated", endpoint_id=endpoint_id, fields=sorted(changes),
                 held_deliveries=held)
        details: dict[str, JsonValue] = {"fields": list(sorted(changes)),
                                         "status": record.status}
        if "retry_schedule" in changes:
            details["retry_schedule"] = _shown(record)
        if "headers" in changes:
            details["header_names"] = list(record.header_names)
        if "rate_limit" in changes:
            details["rate_limit"] = _rate_shown(record)
        if "ordering" in changes or "ordering_key" in changes:
            details.update(ordering=record.ordering, ordering_key=record.ordering_key)
        facts = [self._fact("endpoint.updated", principal.token_id, tenant=record.tenant_id,
                            endpoint_id=endpoint_id, url=record.url, details=details)]
        if enabling:
            facts.append(enabled_fact(endpoint_id, record.url, actor=principal.token_id,
                                      held=held, now=now, tenant=record.tenant_id))
        if disabling:
            facts.append(disabled_fact(endpoint_id, record.url, "manual", trigger=None,
                                       actor=principal.token_id, failing_since=None, now=now,
                                       tenant=record.tenant_id))
        for fact in facts:
            await self.audit(fact)
        out = EndpointPatched(**_endpoint_out(record).model_dump(), held_deliveries=held)
        return _body(out)

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "tenant_admin")
        endpoint_id = _ident(request, "endpoint")
        async with self.store.transaction() as conn:
            record = await self._own_endpoint(principal, endpoint_id, conn)
            if not await self.store.delete_endpoint(conn, endpoint_id):
                raise _not_found("endpoint", endpoint_id)
            await self._announce(
                topology.CONTROL_EXCHANGE, "secret.delete", EndpointSecret(
                    endpoint_id=endpoint_id, action="delete", issued_at=utcnow()),
                outcome="The message broker did not confirm: the endpoint was not deleted, "
                "but the signer may already have dropped its secret (its deliveries then "
                "fail to sign). Retry the delete.")
        log.info("endpoint_deleted", endpoint_id=endpoint_id)
        await self.audit(self._fact("endpoint.deleted", principal.token_id,
                                    endpoint_id=endpoint_id, url=record.url,
                                    tenant=record.tenant_id))
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "tenant_admin")
        endpoint_id = _ident(request, "endpoint")
        body: SecretRotate = _validate(SecretRotate, await self._json(request), self._limits())
        owner = (await self._own_endpoint(principal, endpoint_id)).tenant_id
        now = utcnow()
        until = now + timedelta(seconds=body.overlap_seconds)
        public: str | None = None
        async with self.store.transaction() as conn:
            before = await self.store.get_endpoint(endpoint_id, conn)
            if before is None:
                raise _not_found("endpoint", endpoint_id)
            values: dict[str, Any] = {"updated_at": now}
            if before.signature_scheme == "ed25519":
                if body.secret is not None:
                    raise error(422, "validation_failed", "The request body is not valid.",
                                [{"field": "secret", "message": "leave it out for an ed25519 "
                                  "endpoint: Dihya generates the signing key"}])
                secret = generate_signing_key()
                public = public_key_of(secret)
                # as the keystore does: the current key signs on until the overlap ends,
                # previous keys until their own deadline
                previous = [(key, until if valid is None else valid)
                            for key, valid in before.public_keys or ()
                            if (valid is None and until > now)
                            or (valid is not None and valid > now)]
                values["public_keys"] = ((public, None), *previous)
            else:
                secret = body.secret or generate_secret()
            await self.store.update_endpoint(conn, endpoint_id, values)
            await self._announce(
                topology.CONTROL_EXCHANGE, "secret.set", EndpointSecret(
                    endpoint_id=endpoint_id, action="set", secret=SecretStr(secret),
                    previous_valid_until=until, issued_at=now),
                outcome="The message broker did not confirm the new secret: the rotation was "
                "not saved, but the signer may already sign with a secret you were not shown "
                "(the previous one stays valid for the overlap). Retry the rotation.")
        log.info("secret_rotated", endpoint_id=endpoint_id)
        await self.audit(self._fact("secret.set", principal.token_id, endpoint_id=endpoint_id,
                                    tenant=owner,
                                    details={"overlap_seconds": body.overlap_seconds}))
        return _body(SecretRotated(id=endpoint_id, secret=None if public else secret,
                                   public_key=public, previous_valid_until=until))

    # -- dead-letter store ------------------------------------------------------------------

    async def list_deliveries(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "viewer", "tenant_admin",
                                    "tenant_viewer")
        endpoint_id = _ident(request, "endpoint")
        if not await self._may_see(principal, endpoint_id):  # platform roles: even deleted
            raise _not_found("endpoint", endpoint_id)
        query: DeliveryQuery = _validate(DeliveryQuery, dict(request.query))
        records = await self.store.list_deliveries(endpoint_id, status=query.status,
                                                   limit=query.limit + 1, after=query.after)
        if not records and await self.store.get_endpoint(endpoint_id) is None:
            raise _not_found("endpoint", endpoint_id)
        page = records[: query.limit]
        nxt = page[-1].delivery_id if len(records) > query.limit else None
        return _body(DeliveryList(items=[_delivery_out(r) for r in page], next=nxt))

    async def retry_delivery(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "tenant_admin")
        delivery_id = _ident(request, "delivery")
        record = await self.store.get_delivery(delivery_id)
        if record is None or not await self._may_see(principal, record.endpoint_id):
            raise _not_found("delivery", delivery_id)
        endpoint = await self._sendable(record.endpoint_id)
        if record.status == "retried":
            raise _already_retried(record)
        sent = await self._resend([record], endpoint, principal.token_id, "retry")
        if not sent:  # another administrator resent it meanwhile
            raise _already_retried(record)
        job = sent[0]
        return _body(RetryAccepted(delivery_id=job.delivery_id, endpoint_id=job.endpoint_id,
                                   attempt=job.attempt, status="retried"), 202)

    async def recover_endpoint(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "tenant_admin")
        endpoint_id = _ident(request, "endpoint")
        body: RecoverRequest = _validate(RecoverRequest, await self._json(request))
        await self._own_endpoint(principal, endpoint_id)
        endpoint = await self._sendable(endpoint_id, missing=404)
        sent: list[DeliveryJob] = []
        after: str | None = None
        while True:
            page = await self.store.recoverable(endpoint_id, since=body.since,
                                                limit=RESEND_BATCH, after=after)
            if not page:
                break
            try:
                sent += await self._resend(page, endpoint, principal.token_id, "recover")
            except BrokerUnavailableError:
                if not sent:
                    raise
                raise error(503, "broker_unavailable",
                            f"{len(sent)} deliveries were sent before the broker stopped "
                            "confirming; recover again to send the rest (those sent are "
                            "not sent twice; one of the unconfirmed batch may arrive twice, "
                            "with its webhook-id).") from None
            after = page[-1].delivery_id
        log.info("endpoint_recovered", endpoint_id=endpoint_id, count=len(sent),
                 since=body.since.isoformat(), actor=principal.token_id)
        return _body(RecoverAccepted(endpoint_id=endpoint_id, count=len(sent),
                                     delivery_ids=[j.delivery_id for j in sent]), 202)

    async def list_parked(self, request: web.Request) -> web.Response:
        await authorize(request, "admin")
        query: ListQuery = _validate(ListQuery, dict(request.query))
        records = await self.store.list_parked(limit=query.limit + 1, after=query.after)
        page = records[: query.limit]
        nxt = page[-1].id if len(records) > query.limit else None
        return _body(ParkedList(items=[_parked_out(r) for r in page], next=nxt))

    async def _may_see(self, principal: Principal, endpoint_id: str) -> bool:
        """May the caller see objects of this endpoint (a platform role: always; a tenant
        role: only while the endpoint exists and is its tenant's)?"""
        confined = scope_of(principal.role, principal.tenant)
        if confined is None:
            return True
        record = await self.store.get_endpoint(endpoint_id)
        return record is not None and record.tenant_id == confined

    async def _sendable(self, endpoint_id: str, *, missing: int = 409) -> EndpointRecord:
        """The endpoint deliveries may be resent to; 404/409 if deleted, 409 if disabled."""
        endpoint = await self.store.get_endpoint(endpoint_id)
        if endpoint is None:
            if missing == 404:
                raise _not_found("endpoint", endpoint_id)
            raise error(409, "endpoint_deleted",
                        f"Endpoint {endpoint_id!r} was deleted; its deliveries cannot be sent.")
        if endpoint.status != "enabled":
            why = f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else ""
            raise error(409, "endpoint_disabled",
                        f"Endpoint {endpoint_id!r} is disabled{why}. Enable it first "
                        "(PATCH /v1/endpoints/{id} with status=enabled), then retry.")
        return endpoint

    async def _resend(self, records: Sequence[DeliveryRecord], endpoint: EndpointRecord,
                      actor: str, via: Literal["retry", "recover", "resend"]
                      ) -> list[DeliveryJob]:
        """Send stored deliveries to the signer again and mark them ``retried``.

        Per batch, in one transaction: mark the rows (only those still failed/held: two
        concurrent requests send each delivery once), publish their jobs and await every
        confirm, then commit. A failed publish rolls the batch back (503; nothing of it was
        marked, though a job whose confirm was lost may still arrive). Audited afterwards,
        one ``delivery.retry_requested`` fact per delivery.
        """
        sent: list[DeliveryJob] = []
        for start in range(0, len(records), RESEND_BATCH):
            chunk = records[start:start + RESEND_BATCH]
            now = utcnow()
            batch: list[tuple[DeliveryRecord, DeliveryJob]] = []
            async with self.store.transaction() as conn:
                for record in chunk:
                    if await self.store.mark_retried(conn, record.delivery_id,
                                                     was=record.status, actor=actor, now=now):
                        batch.append((record, resend(record.job, endpoint.url,
                                                     endpoint.retry_schedule_ms,
                                                     endpoint.rate_limit)))
                if batch and self.log is not None:
                    await self.log.mark([job.delivery_id for _, job in batch], "retried",
                                        now, conn)
                try:
                    await confirm_all([
                        self.publisher.send(topology.WORK_EXCHANGE, topology.SIGN, job,
                                            headers={"x-dihya-event-id": job.event.id or "",
                                                     "x-dihya-delivery-id": job.delivery_id})
                        for _, job in batch])
                except Exception as exc:
                    log.error("resend_failed", endpoint_id=endpoint.id, via=via,
                              error=type(exc).__name__)
                    raise BrokerUnavailableError(
                        topology.SIGN, "The message broker did not confirm: the deliveries "
                        "were not marked as sent again, but some may have been sent (each "
                        "with its webhook-id). Retry.") from exc
            metrics.DELIVERIES_RESENT.labels(via=via).inc(len(batch))
            for _, job in batch:
                log.info("delivery_resent", delivery_id=job.delivery_id,
                         endpoint_id=job.endpoint_id, event_id=job.event.id,
                         attempt=job.attempt, via=via, actor=actor)
            await asyncio.gather(*(
                self.audit(retry_fact(job, actor=actor, via=via, previous=record.status,
                                      reason=record.reason, now=now))
                for record, job in batch))
            sent += [job for _, job in batch]
        return sent

    # -- message log ----------------------------------------------------------------------

    def _message_log(self) -> MessageLog:
        assert self.log is not None, "the API runs with a store"
        return self.log

    async def list_events(self, request: web.Request) -> web.Response:
        principal = await authorize(request, *_READ)
        query: EventQuery = _validate(EventQuery, dict(request.query))
        after = _cursor(query.cursor)
        tenant = await self._tenant_filter(principal, query.tenant)
        rows = await self._message_log().list_events(
            EventFilter(event_type=query.type_, status=query.status,
                        endpoint_id=query.endpoint, since=query.since, until=query.until,
                        tenant=tenant),
            limit=query.limit + 1, after=after)
        page = rows[: query.limit]
        nxt = (encode_cursor(page[-1].received_at, page[-1].id)
               if len(rows) > query.limit else None)
        items = []
        for row in page:
            c = row.counts
            items.append(EventSummary(
                id=row.id, event=row.event_type, received_at=row.received_at,
                lang=row.lang if row.lang in ("fr", "en", "ar", "tzm") else None,
                deliveries=DeliveryCounts(
                    total=sum(c.values()), delivered=c.get("delivered", 0),
                    failed=c.get("failed", 0),
                    pending=c.get("pending", 0) + c.get("retried", 0),
                    held=c.get("held", 0))))
        return _body(EventPage(items=items, next_cursor=nxt))

    async def get_event(self, request: web.Request) -> web.Response:
        principal = await authorize(request, *_READ)
        event_id = _ident(request, "event", pattern=_EVENT_ID_RE)
        found = await self._message_log().get_event(
            event_id, tenant=scope_of(principal.role, principal.tenant))
        if found is None:
            raise _not_found("event", event_id)
        event, deliveries = found
        return _body(EventDetail(
            id=event.id, event=event.event_type, received_at=event.received_at,
            payload=event.payload,
            deliveries=[LogDeliveryOut(
                id=d.id, endpoint_id=d.endpoint_id, url=d.url, status=d.status,
                next_retry_at=d.next_retry_at,
                attempts=[AttemptOut(**vars(a)) for a in attempts])
                for d, attempts in deliveries]))

    async def list_log_deliveries(self, request: web.Request) -> web.Response:
        principal = await authorize(request, *_READ)
        query: LogDeliveryQuery = _validate(LogDeliveryQuery, dict(request.query))
        after = _cursor(query.cursor)
        tenant = await self._tenant_filter(principal, query.tenant)
        rows = await self._message_log().list_deliveries(
            status=query.status, endpoint_id=query.endpoint, event_id=query.event,
            limit=query.limit + 1, after=after, tenant=tenant)
        page = rows[: query.limit]
        nxt = (encode_cursor(page[-1].created_at, page[-1].id)
               if len(rows) > query.limit else None)
        return _body(DeliveryPage(items=[_summary(r) for r in page], next_cursor=nxt))

    async def resend_delivery(self, request: web.Request) -> web.Response:
        """Send any delivery again — delivered ones too — as its next attempt."""
        principal = await authorize(request, "admin", "tenant_admin")
        delivery_id = _ident(request, "delivery")
        row = await self._message_log().get_delivery(delivery_id)
        stored = await self.store.get_delivery(delivery_id)
        owner = (row.endpoint_id if row is not None
                 else stored.endpoint_id if stored is not None else "")
        if (row is None and stored is None) or not await self._may_see(principal, owner):
            raise _not_found("delivery", delivery_id)
        endpoint = await self._sendable(row.endpoint_id if row is not None
                                        else stored.endpoint_id if stored is not None else "")
        if stored is not None and stored.status in ("failed", "held"):
            sent = await self._resend([stored], endpoint, principal.token_id, "resend")
            if sent:
                return _body(ResendAccepted(delivery_id=delivery_id,
                                            attempt=sent[0].attempt), 202)
            stored = await self.store.get_delivery(delivery_id)  # resent meanwhile
        if row is None or row.status in ("pending", "retried"):
            raise error(409, "delivery_in_flight",
                        f"Delivery {delivery_id!r} is on its way (or awaiting its next "
                        "automatic attempt); resend it once it is delivered or failed.")
        job = await self._job_from_log(row, endpoint, stored)
        now = utcnow()
        async with self.store.transaction() as conn:
            await self._message_log().mark([delivery_id], "retried", now, conn)
            await self._announce(
                topology.WORK_EXCHANGE, topology.SIGN, job,
                outcome=f"The message broker did not confirm: delivery {delivery_id} may or "
                "may not have been sent again (with its webhook-id, as attempt "
                f"{job.attempt}). Resend it if it does not arrive.")
        metrics.DELIVERIES_RESENT.labels(via="resend").inc()
        log.info("delivery_resent", delivery_id=delivery_id, endpoint_id=job.endpoint_id,
                 event_id=job.event.id, attempt=job.attempt, via="resend",
                 actor=principal.token_id)
        await self.audit(retry_fact(job, actor=principal.token_id, via="resend",
                                    previous=row.status, reason=None, now=now))
        return _body(ResendAccepted(delivery_id=delivery_id, attempt=job.attempt), 202)

    async def _job_from_log(self, row: DeliveryRow, endpoint: EndpointRecord,
                            stored: DeliveryRecord | None) -> DeliveryJob:
        """The job that sends a logged delivery again: its event as delivered (the retained
        payload, or the dead-letter store's copy), the endpoint's current URL and schedule,
        the attempt after the last one seen."""
        if stored is not None:
            job = resend(stored.job, endpoint.url, endpoint.retry_schedule_ms,
                         endpoint.rate_limit)
        else:
            found = await self._message_log().get_event(row.event_id)
            payload = None if found is None else found[0].payload
            if payload is None:
                raise error(409, "payload_not_retained",
                            f"The payload of delivery {row.id!r} is no longer kept "
                            "(DIHYA_INGEST_PAYLOAD_RETENTION_DAYS or an erasure): it cannot "
                            "be sent again.")
            job = DeliveryJob(delivery_id=row.id, endpoint_id=endpoint.id, url=endpoint.url,
                              event=Event.model_validate(payload),
                              retry_schedule_ms=endpoint.retry_schedule_ms,
                              rate_limit=endpoint.rate_limit, tenant=endpoint.tenant_id)
        # a new attempt number: the deliverer's fact ids (and audit's de-duplication) rely on it
        return job.model_copy(update={"attempt": max(job.attempt, row.last_attempt + 1)})

    async def retry_failed(self, request: web.Request) -> web.Response:
        """Send every failed delivery of the endpoint again (bulk retry)."""
        principal = await authorize(request, "admin", "tenant_admin")
        endpoint_id = _ident(request, "endpoint")
        await self._own_endpoint(principal, endpoint_id)
        endpoint = await self._sendable(endpoint_id, missing=404)
        sent = 0
        after: str | None = None
        while True:
            page = await self.store.list_deliveries(endpoint_id, status="failed",
                                                    limit=RESEND_BATCH, after=after)
            if not page:
                break
            try:
                sent += len(await self._resend(page, endpoint, principal.token_id, "retry"))
            except BrokerUnavailableError:
                if not sent:
                    raise
                raise error(503, "broker_unavailable",
                            f"{sent} deliveries were sent before the broker stopped "
                            "confirming; retry again to send the rest (those sent are not "
                            "sent twice; one of the unconfirmed batch may arrive twice, with "
                            "its webhook-id).") from None
            after = page[-1].delivery_id
        log.info("endpoint_failed_retried", endpoint_id=endpoint_id, count=sent,
                 actor=principal.token_id)
        return _body(RetryFailedAccepted(retried=sent), 202)

    async def test_endpoint(self, request: web.Request) -> web.Response:
        """A test event of a catalog type to this one endpoint (not to the type's other
        subscribers): ingest makes its one job itself and hands it to the signer."""
        principal = await authorize(request, "admin", "tenant_admin")
        endpoint_id = _ident(request, "endpoint")
        body: EndpointTest = _validate(EndpointTest, await self._json(request))
        await self._own_endpoint(principal, endpoint_id)
        endpoint = await self._sendable(endpoint_id, missing=404)
        spec = self.catalog.types.get(body.event)
        data: dict[str, JsonValue] = {name: f"example-{name}"
                                      for name in (spec.placeholders if spec else [])}
        data["test"] = True
        now = utcnow()
        event = Event(id=new_id("evt"), event=body.event, timestamp=now, lang=body.lang,
                      data=data)
        screened = screen(event, self.catalog, self.settings.unknown_event_types)
        if isinstance(screened, Rejection):
            raise error(422, "unknown_event_type", screened.error,
                        [{"field": "event", "message": "not in the event-type catalog"}])
        event = screened
        assert event.id is not None
        job = DeliveryJob(delivery_id=delivery_id(event.id, endpoint.id),
                          endpoint_id=endpoint.id, url=endpoint.url, event=event,
                          retry_schedule_ms=endpoint.retry_schedule_ms,
                          rate_limit=endpoint.rate_limit, tenant=endpoint.tenant_id)
        if self.log is not None and self.settings.message_log:
            await self.log.record(
                [log_event(event, now, keep_payload=self.settings.payload_retention_days > 0,
                           tenant=endpoint.tenant_id)],
                [log_delivery(job, now)])
        await self._announce(
            topology.WORK_EXCHANGE, topology.SIGN, job,
            outcome=f"The message broker did not confirm: test event {event.id} may or may "
            "not have been sent (the message log lists it). Test again if it does not arrive.")
        fact = accepted_fact(event, [job], now, tenant=endpoint.tenant_id)
        await self.audit(fact.model_copy(update={
            "actor": principal.token_id, "endpoint_id": endpoint.id,
            "details": {**fact.details, "test": True}}))
        log.info("endpoint_tested", endpoint_id=endpoint.id, event_id=event.id,
                 event_type=event.event, actor=principal.token_id)
        return _body(TestSent(id=event.id, event=event.event, delivery_id=job.delivery_id),
                     202)

    async def subject_export(self, request: web.Request) -> web.Response:
        """GDPR Art. 15: the retained payloads about one data subject."""
        principal = await authorize(request, "admin", "auditor")
        subject = _subject(request)
        events = await self._message_log().subject_events(subject)
        log.info("subject_exported", events=len(events), actor=principal.token_id)
        return _body(SubjectExport(subject=subject, events=[
            SubjectEvent(id=e.id, event=e.event_type, received_at=e.received_at,
                         payload=e.payload) for e in events]))

    async def subject_erasure(self, request: web.Request) -> web.Response:
        """GDPR Art. 17: remove the subject's payloads from the message log."""
        principal = await authorize(request, "admin")
        subject = _subject(request)
        count = await self._message_log().erase_subject(subject)
        log.info("subject_payloads_erased", events=count, actor=principal.token_id)
        return _body(SubjectErased(subject_events=count))

    # -- events ---------------------------------------------------------------------------

    async def publish_event(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "publisher", "admin")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not (
            0 < len(key) <= MAX_IDEMPOTENCY_KEY and all(" " <= c <= "~" for c in key)
        ):
            metrics.rejected(None, "http_invalid")
            raise error(422, "validation_failed", "The Idempotency-Key header is not valid.",
                        [{"field": IDEMPOTENCY_HEADER,
                          "message": f"1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"}])
        raw = await self._json(request)
        try:
            event = Event.model_validate(raw)
        except ValidationError as exc:
            metrics.rejected(peek_type(_as_bytes(raw)), "http_invalid")
            raise validation_error(exc) from None
        if not admits(self.catalog, self.settings.unknown_event_types, event.event):
            metrics.rejected(event.event, "unknown_event_type")
            raise error(422, "unknown_event_type", unknown_message(event.event),
                        [{"field": "event", "message": "not in the event-type catalog"}])
        tenant = await self._tenant_of_event(event)
        if tenant is not None:  # before the idempotency claim: a 429 leaves no claim behind
            await self._check_rate(tenant, event.event)
        event_id = event.id or new_id("evt")
        filled = event.model_copy(update={"id": event_id,
                                          "timestamp": event.timestamp or utcnow()})
        # One limit at both doors: the event as published (id and timestamp filled in, numbers
        # re-encoded: 1e15 is written 1000000000000000.0) must pass ingest's own AMQP door too.
        if len(encode(filled)) > self.settings.max_body_bytes:
            metrics.rejected(event.event, "body_too_large")
            raise error(413, "body_too_large",
                        f"The event exceeds {self.settings.max_body_bytes} bytes once its id "
                        "and timestamp are filled in.")
        if key is not None:
            claim = await self.store.claim_key(
                principal.token_id, key, event_id=event_id, event_type=event.event,
                now=utcnow(), window_seconds=self.settings.idempotency_window)
            if claim is not None and not claim.confirmed:  # in flight, or failed
                claim = await self._settled(principal.token_id, key, claim)
            if claim is not None and claim.confirmed:
                metrics.IDEMPOTENT_REPLAYS.inc()
                log.info("event_replayed", event_id=claim.event_id, actor=principal.token_id)
                return _body(EventAccepted(id=claim.event_id, event=claim.event_type), 202,
                             headers={REPLAYED_HEADER: "true"})
            if claim is not None:  # an earlier publish unconfirmed: again, under its id
                event_id = claim.event_id
                log.info("event_republished", event_id=event_id, actor=principal.token_id)
        filled = event.model_copy(update={"id": event_id,
                                          "timestamp": event.timestamp or utcnow()})
        try:
            await self._announce(topology.EVENTS_EXCHANGE, event.event, filled,
                                 headers={RATE_CHECKED_HEADER: "1"})
        except BrokerUnavailableError:
            # The event may have reached the broker (a confirm lost with its connection): the
            # key keeps its id, and the 503 names the id a retry without a key should carry.
            raise EventUnconfirmedError(event_id, key is not None) from None
        if key is not None:
            await self.store.confirm_key(principal.token_id, key, event_id, utcnow())
        log.info("event_received", event_id=event_id, event_type=event.event,
                 actor=principal.token_id)
        return _body(EventAccepted(id=event_id, event=event.event), 202)

    async def _tenant_of_event(self, event: Event) -> str | None:
        """The tenant id an event is for (``None``: every tenant); 422 for an event naming
        no tenant, an unknown one, or a tenant and ``all_tenants``. The consumer resolves the
        tenant again (the AMQP door's events never pass here)."""
        ref = requested(event, self.settings.default_tenant)
        if isinstance(ref, TenantRefusal):
            metrics.rejected(event.event, ref.reason)
            raise error(422, ref.reason, "The event names no tenant it may reach.",
                        [{"field": "tenant", "message": ref.error}])
        if not isinstance(ref, str):  # every tenant
            return None
        tenant = await self.tenants.resolve(ref)
        if tenant is None:
            metrics.rejected(event.event, "unknown_tenant")
            raise error(422, "unknown_tenant", f"No tenant {ref[:128]!r}.",
                        [{"field": "tenant", "message": "no tenant with this id or "
                          "external id"}])
        return tenant

    async def _check_rate(self, tenant: str, event_type: str) -> None:
        """429 with Retry-After over the tenant's events per second (platform-wide events
        are not counted against any one tenant)."""
        wait = await self._rate.take(tenant)
        if wait > 0:
            metrics.rejected(event_type, "tenant_rate_limited")
            raise error(429, "tenant_rate_limited",
                        f"The tenant publishes more than {self._rate.per_second:g} events per "
                        "second (DIHYA_INGEST_TENANT_EVENTS_PER_SECOND); retry later.",
                        headers={"Retry-After": retry_after(wait)})

    async def _settled(self, scope: str, key: str, claim: Claim) -> Claim:
        """Wait while the publish of a claimed, unconfirmed event may still be in flight (at
        most the publish timeout after the claim); then the claim as it stands — confirmed
        (replay it) or not (the publish failed or its request died: publish it again)."""
        assert claim.claimed_at is not None
        deadline = claim.claimed_at + timedelta(seconds=self.settings.publish_timeout + 1)
        while not claim.confirmed and utcnow() < deadline:
            await asyncio.sleep(SETTLE_POLL)
            claim = await self.store.find_key(scope, key) or claim
        return claim

    async def list_event_types(self, request: web.Request) -> web.Response:
        await authorize(request, "admin", "publisher", "viewer", "auditor", "tenant_admin",
                        "tenant_viewer")
        items = [EventTypeOut(event=name, description=spec.description.model_dump(),
                              details=spec.details.model_dump(),
                              placeholders=spec.placeholders, internal=name in INTERNAL_TYPES,
                              awaiting_native_review=list(spec.unreviewed))
                 for name, spec in self.catalog.types.items()]
        return _body(EventTypeList(items=items,
                                   unknown_event_types=self.settings.unknown_event_types))

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin")
        body: TokenCreate = _validate(TokenCreate, await self._json(request))
        tenant: str | None = None
        if body.tenant is not None:
            tenant = await self.tenants.resolve(body.tenant)
            if tenant is None:
                raise error(422, "unknown_tenant", f"No tenant {body.tenant[:128]!r}.",
                            [{"field": "tenant", "message": "no tenant with this id or "
                              "external id"}])
        token = generate_token()
        now = utcnow()
        record = TokenRecord(id=new_id("tok"), role=body.role, description=body.description,
                             token_hash=hash_token(token), created_at=now, revoked_at=None,
                             tenant_id=tenant)
        async with self.store.transaction() as conn:
            await self.store.insert_token(conn, record)
            await self._announce(
                topology.CONTROL_EXCHANGE, "token.created", TokenGrant(
                    token_id=record.id, role=record.role, token_hash=record.token_hash,
                    issued_at=now, tenant=tenant),
                outcome="The message broker did not confirm: no token was created (the audit "
                "service may have its grant, but the token was never shown, so no one can "
                "use it). Retry.")
        log.info("token_created", token_id=record.id, role=record.role, tenant=tenant)
        await self.audit(self._fact("token.created", principal.token_id, tenant=tenant,
                                    details={"token_id": record.id, "role": record.role}))
        out = TokenCreated(**_token_out(record).model_dump(), token=token)
        return _body(out, 201)

    async def list_tokens(self, request: web.Request) -> web.Response:
        await authorize(request, "admin")
        query: ListQuery = _validate(ListQuery, dict(request.query))
        records = await self.store.list_tokens(limit=query.limit + 1, after=query.after)
        page = records[: query.limit]
        nxt = page[-1].id if len(records) > query.limit else None
        return _body(TokenList(items=[_token_out(r) for r in page], next=nxt))

    async def revoke_token(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin")
        token_id = _ident(request, "token")
        now = utcnow()
        async with self.store.transaction() as conn:
            record = await self.store.revoke_token(conn, token_id, now)
            if record is None:
                raise _not_found("token", token_id)
            await self._announce(
                topology.CONTROL_EXCHANGE, "token.revoked", TokenGrant(
                    token_id=record.id, role=record.role, token_hash=record.token_hash,
                    revoked=True, issued_at=now, tenant=record.tenant_id),
                outcome=f"The message broker did not confirm: token {token_id} is not "
                "revoked (the audit service may already refuse it). Retry the revocation.")
        log.info("token_revoked", token_id=token_id)
        await self.audit(self._fact("token.revoked", principal.token_id,
                                    details={"token_id": record.id, "role": record.role}))
        return web.Response(status=204)

    async def whoami(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin", "publisher", "auditor", "viewer",
                                    "tenant_admin", "tenant_viewer")
        return _body(WhoAmI(token_id=principal.token_id, role=principal.role,
                            tenant=principal.tenant))

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = orjson.dumps(document(ROUTES))
        return web.Response(body=self._openapi, content_type="application/json")


def _as_bytes(raw: Any) -> bytes:
    try:
        return orjson.dumps(raw)
    except TypeError:
        return b""


def _not_found(kind: str, ident: str) -> web.HTTPException:
    return error(404, "not_found", f"No {kind} with id {ident[:64]!r}.")


def _ident(request: web.Request, kind: str, pattern: re.Pattern[str] = ID_RE) -> str:
    """The ``{id}`` of the path. Ids are ``ep_…``, ``dlv_…``, ``tok_…``: anything else cannot
    exist, so it is a 404 before it reaches the database (PostgreSQL refuses NUL bytes)."""
    value = request.match_info["id"]
    if not pattern.fullmatch(value):
        raise _not_found(kind, value)
    return value


_EVENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
"""An event id (the contract's ``ExternalId``: publishers choose them, up to 128)."""
_SUBJECT_MAX = 512


def _subject(request: web.Request) -> str:
    subject = request.match_info["subject"]
    if not 0 < len(subject) <= _SUBJECT_MAX or "\x00" in subject:
        raise error(422, "invalid_subject", "The subject id is not one the log can hold.",
                    [{"field": "subject", "message": "1 to 512 characters, no NUL"}])
    return subject


def _cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        return decode_cursor(cursor)
    except CursorError:
        raise error(422, "validation_failed", "The cursor is not valid.",
                    [{"field": "cursor", "message": "pass a next_cursor of this list"}]
                    ) from None


def _summary(row: DeliveryRow) -> DeliverySummary:
    return DeliverySummary(id=row.id, endpoint_id=row.endpoint_id, url=row.url,
                           status=row.status, next_retry_at=row.next_retry_at,
                           event_id=row.event_id, event=row.event_type,
                           attempts_count=row.attempts_count,
                           last_attempt_at=row.last_attempt_at)


def _already_retried(record: DeliveryRecord) -> web.HTTPException:
    return error(409, "already_retried",
                 f"Delivery {record.delivery_id!r} was already sent again; if that attempt "
                 "fails too, it is listed as failed again and can be retried.")


# -- the route table ----------------------------------------------------------------------

_AUTH = (401, 403)
_READ: tuple[Role, ...] = ("admin", "viewer", "tenant_admin", "tenant_viewer")
"""Who reads endpoints and their deliveries (a tenant role: its tenant's only)."""
_WRITE: tuple[Role, ...] = ("admin", "tenant_admin")
"""Who manages endpoints, secrets and deliveries (a tenant role: its tenant's only)."""
_BODY = (400, 413, 415, 422)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/endpoints", "create_endpoint",
          "Register a webhook endpoint; its signing secret is returned this once. "
          "`retry_schedule` (seconds) overrides the deployment's retry schedule for it; "
          "`rate_limit` paces its deliveries.",
          _WRITE, body=EndpointCreate, responses={201: EndpointCreated},
          errors=(*_AUTH, *_BODY, 503)),
    Route("GET", "/v1/endpoints", "list_endpoints",
          "List endpoints (never their secrets); `include=health` adds each one's last 24 "
          "hours: success rate, attempts, last delivery, state and attempts per hour.",
          _READ, query=EndpointListQuery, responses={200: EndpointList},
          errors=(*_AUTH, 422)),
    Route("GET", "/v1/endpoints/{id}/health", "endpoint_health",
          "One endpoint's last 24 hours: success rate, attempts, last delivery, state "
          "(enabled, failing, disabled) and attempts by outcome per hour.",
          _READ, responses={200: EndpointHealthOut}, errors=(*_AUTH, 404)),
    Route("POST", "/v1/endpoints/{id}/test", "test_endpoint",
          "Send a test event of a type (default `dihya.test`) to this endpoint only: the "
          "catalog's example data with `test: true`; it shows in the message log and the "
          "audit log like any event.",
          _WRITE, body=EndpointTest, responses={202: TestSent},
          errors=(*_AUTH, 404, 409, *_BODY, 503)),
    Route("POST", "/v1/endpoints/{id}/retry-failed", "retry_failed",
          "Send every failed delivery of the endpoint again (bulk retry); each is audited "
          "with who asked.",
          _WRITE, responses={202: RetryFailedAccepted}, errors=(*_AUTH, 404, 409, 503)),
    Route("GET", "/v1/endpoints/{id}", "get_endpoint", "Read one endpoint.",
          _READ, responses={200: EndpointOut}, errors=(*_AUTH, 404)),
    Route("PATCH", "/v1/endpoints/{id}", "update_endpoint",
          "Change an endpoint's url, events, description, status, retry schedule, custom "
          "headers or rate limit (`retry_schedule: null` returns it to the deployment's, "
          "`rate_limit: null` removes the limit). Re-enabling a disabled "
          "endpoint answers how many deliveries were held meanwhile (`held_deliveries`); "
          "send them with `POST /v1/endpoints/{id}/recover`.",
          _WRITE, body=EndpointUpdate, responses={200: EndpointPatched},
          errors=(*_AUTH, 404, *_BODY)),
    Route("DELETE", "/v1/endpoints/{id}", "delete_endpoint",
          "Delete an endpoint; the signer forgets its secret.",
          _WRITE, responses={204: None}, errors=(*_AUTH, 404, 503)),
    Route("POST", "/v1/endpoints/{id}/secret/rotate", "rotate_secret",
          "Rotate an endpoint's secret; the previous one stays valid for the overlap.",
          _WRITE, body=SecretRotate, responses={200: SecretRotated},
          errors=(*_AUTH, 404, *_BODY, 503)),
    Route("GET", "/v1/endpoints/{id}/deliveries", "list_deliveries",
          "List an endpoint's stored deliveries: failed (given up by the pipeline, with "
          "every attempt), held (kept while it was disabled) or retried.",
          _READ, query=DeliveryQuery, responses={200: DeliveryList},
          errors=(*_AUTH, 404, 422)),
    Route("POST", "/v1/deliveries/{id}/retry", "retry_delivery",
          "Send a failed or held delivery again (next attempt number, history kept, the "
          "endpoint's current URL); audited with who asked.",
          _WRITE, responses={202: RetryAccepted}, errors=(*_AUTH, 404, 409, 503)),
    Route("POST", "/v1/endpoints/{id}/recover", "recover_endpoint",
          "Send again every delivery of the endpoint that failed at or after `since`, and "
          "every held one; each is audited with who asked.",
          _WRITE, body=RecoverRequest, responses={202: RecoverAccepted},
          errors=(*_AUTH, 404, 409, *_BODY, 503)),
    Route("GET", "/v1/events", "list_events",
          "The message log: accepted events, newest first, with their deliveries by status; "
          "filter by type, delivery status, endpoint and reception time; cursor-paged.",
          _READ, query=EventQuery, responses={200: EventPage},
          errors=(*_AUTH, 422)),
    Route("GET", "/v1/events/{id}", "get_event",
          "One event: its payload as delivered (while retained) and, per endpoint, every "
          "attempt (request headers with shortened signatures, response status, headers and "
          "excerpt, latency) and the next retry.",
          _READ, responses={200: EventDetail}, errors=(*_AUTH, 404)),
    Route("GET", "/v1/deliveries", "list_log_deliveries",
          "Deliveries of every endpoint, newest first; filter by status, endpoint and event; "
          "cursor-paged.",
          _READ, query=LogDeliveryQuery, responses={200: DeliveryPage},
          errors=(*_AUTH, 422)),
    Route("POST", "/v1/deliveries/{id}/resend", "resend_delivery",
          "Send a delivery again as its next attempt — delivered ones too; audited with who "
          "asked. 409 while it is on its way, when its endpoint is disabled or deleted, or "
          "when its payload is no longer retained.",
          _WRITE, responses={202: ResendAccepted}, errors=(*_AUTH, 404, 409, 503)),
    Route("GET", "/v1/subjects/{subject}/export", "subject_export",
          "GDPR Art. 15: the retained payloads of the events about a data subject (their "
          "`data.user_id`); the audit service's subject export holds the rest.",
          ("admin", "auditor"), responses={200: SubjectExport}, errors=(*_AUTH, 422)),
    Route("POST", "/v1/subjects/{subject}/erasure", "subject_erasure",
          "GDPR Art. 17: remove a data subject's payloads from the message log (the audit "
          "service erases its records; its erasure also asks ingest to do this).",
          ("admin",), responses={200: SubjectErased}, errors=(*_AUTH, 422)),
    Route("GET", "/v1/parked-messages", "list_parked",
          "List unreadable messages taken from the signer's and deliverer's parking queues "
          "(not delivery jobs: kept verbatim with their reason and headers).",
          ("admin",), query=ListQuery, responses={200: ParkedList}, errors=(*_AUTH, 422)),
    Route("POST", "/v1/events", "publish_event",
          "Publish an event (the guide's payload template); it is fanned out to every "
          "enabled endpoint whose patterns match its type, its `details` completed from the "
          "event-type catalog in the languages it lacks. With "
          "DIHYA_INGEST_UNKNOWN_EVENT_TYPES=refuse, a type not in the catalog gets 422 "
          "`unknown_event_type`. The limits of the AMQP door hold here too: a body (and the "
          "event, its id and timestamp filled in) of at most DIHYA_INGEST_MAX_BODY_BYTES "
          "(413 `body_too_large`); JSON without NaN, Infinity or out-of-range numbers "
          "(400 `non_finite_number`) and without a key twice in one object "
          "(400 `duplicate_key`).",
          ("publisher", "admin"), body=Event, responses={202: EventAccepted},
          errors=(*_AUTH, *_BODY, 429, 503),
          headers={IDEMPOTENCY_HEADER: "Optional, ≤ 255 printable ASCII characters. The same "
                   "key from the same token within DIHYA_INGEST_IDEMPOTENCY_WINDOW seconds "
                   "returns the first event's id (with `Idempotent-Replayed: true`) and "
                   "publishes nothing."}),
    Route("GET", "/v1/event-types", "list_event_types",
          "The event-type catalog: each known type's description and `details` templates in "
          "fr, en, ar and tzm, and what ingest does with a type not listed.",
          ("admin", "publisher", "viewer", "auditor", "tenant_admin",
           "tenant_viewer"), responses={200: EventTypeList},
          errors=_AUTH),
    Route("POST", "/v1/tokens", "create_token",
          "Issue an API token; the token is returned this once, only its hash is kept.",
          ("admin",), body=TokenCreate, responses={201: TokenCreated},
          errors=(*_AUTH, *_BODY, 503)),
    Route("GET", "/v1/tokens", "list_tokens", "List API tokens (never the tokens).",
          ("admin",), query=ListQuery, responses={200: TokenList}, errors=(*_AUTH, 422)),
    Route("DELETE", "/v1/tokens/{id}", "revoke_token", "Revoke an API token.",
          ("admin",), responses={204: None}, errors=(*_AUTH, 404, 503)),
    Route("GET", "/v1/me", "whoami",
          "Who the token is: its id and role (any valid token; the web console signs in "
          "with it).",
          ("admin", "publisher", "auditor", "viewer", "tenant_admin",
           "tenant_viewer"), responses={200: WhoAmI},
          errors=(401,)),
    Route("POST", "/v1/tenants", "create_tenant",
          "Create a tenant (one of the platform's customers): `ten_…`; its `external_id` "
          "(the platform's own customer id, unique) is usable wherever a tenant id is.",
          ("admin",), body=TenantCreate, responses={201: TenantOut},
          errors=(*_AUTH, *_BODY, 409)),
    Route("GET", "/v1/tenants", "list_tenants", "List tenants by id.",
          ("admin",), query=ListQuery, responses={200: TenantList}, errors=(*_AUTH, 422)),
    Route("GET", "/v1/tenants/{id}", "get_tenant",
          "Read one tenant (by id or external id).",
          ("admin",), responses={200: TenantOut}, errors=(*_AUTH, 404)),
    Route("PATCH", "/v1/tenants/{id}", "update_tenant",
          "Change a tenant's name, external id or metadata.",
          ("admin",), body=TenantUpdate, responses={200: TenantOut},
          errors=(*_AUTH, 404, *_BODY, 409)),
    Route("DELETE", "/v1/tenants/{id}", "delete_tenant",
          "Offboard a tenant: its endpoints (the signer forgets their secrets), their stored "
          "deliveries, message-log rows and retained payloads are removed and its tokens "
          "revoked; audited with who did it (the audit log keeps its records). 409 "
          "`default_tenant` for the tenant DIHYA_DEFAULT_TENANT names.",
          ("admin",), responses={200: TenantDeleted},
          errors=(*_AUTH, 404, (409, "The tenant DIHYA_DEFAULT_TENANT names "
                                     "(`default_tenant`)."), 503)),
    Route("GET", "/v1/tenants/{id}/export", "export_tenant",
          "The tenant's data as JSON Lines (`application/x-ndjson`, streamed): the tenant, its "
          "endpoints (never a secret), their stored and logged deliveries, and its logged "
          "events with their retained payloads (those that reached none of its endpoints "
          "too); each line has a `type`. Its audit records: the audit service's "
          "`GET /v1/audit/export?tenant=ten_…`; `dihya tenants export` writes both into one "
          "file.",
          ("admin",), responses={200: None}, errors=(*_AUTH, 404)),
    Route("POST", "/v1/tenants/{id}/portal-sessions", "create_portal_session",
          "A link that opens the web console for this tenant only (a `tenant_viewer` or "
          "`tenant_admin` session, default 1 h), to show the customer or embed in an iframe "
          "(DIHYA_INGEST_PORTAL_FRAME_ANCESTORS). The link's one-time code is in its fragment "
          "and valid DIHYA_INGEST_PORTAL_CODE_TTL seconds.",
          ("admin",), body=PortalSessionCreate, responses={201: PortalSession},
          errors=(*_AUTH, 404, *_BODY)),
    Route("POST", "/v1/portal/exchange", "exchange_portal_code",
          "Open a portal session: its link's one-time code, once, for the session's "
          "tenant-scoped token (the console does this). No token needed; 401 "
          "`invalid_code` for a code unknown, used or expired.",
          (), body=PortalExchange, responses={201: PortalOpened}, errors=(401, *_BODY)),
    Route("GET", "/v1/openapi.json", "openapi", "This document.",
          responses={200: None}),
)

@web.middleware
async def failures_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map dependency failures to a JSON 503 (the shared errors middleware handles the rest)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except EventUnconfirmedError as exc:
        raise _unconfirmed(exc) from None
    except BrokerUnavailableError as exc:
        raise error(503, "broker_unavailable", exc.outcome) from None
    except (DBAPIError, OSError) as exc:
        log.error("storage_failed", path=request.path, error=type(exc).__name__)
        raise error(503, "storage_unavailable", "The database is unavailable. Retry.") from None


def _unconfirmed(exc: EventUnconfirmedError) -> web.HTTPException:
    """The 503 of an event whose publish was not confirmed: it tells the truth (it may have
    been accepted) and how to retry without making a second event."""
    how = ("retry with the same Idempotency-Key" if exc.keyed else
           "retry with `error.event_id` as the body's `id` (or with an Idempotency-Key)")
    detail = ErrorDetail(
        code="broker_unconfirmed", fields=[], event_id=exc.event_id,
        message=f"The message broker did not confirm event {exc.event_id}: it may or may not "
                f"have been accepted; {how}, and it is delivered once.")
    return ApiError(503, ErrorBody(error=detail).model_dump(mode="json"))


def build_app(api: IngestApi, checks: Mapping[str, ReadinessCheck]) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, failures_middleware],
                          client_max_size=api.settings.max_body_bytes + 1024)
    app[TOKEN_LOOKUP] = bootstrap_lookup(
        api.settings.admin_token.get_secret_value() if api.settings.admin_token else None,
        api.lookup)
    app[REFUSAL_HOOK] = api.refused
    for route in ROUTES:
        app.router.add_route(route.method, route.path, getattr(api, route.handler))
    add_ops_routes(app, checks)
    return app
