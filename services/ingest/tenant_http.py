"""The tenant API (``/v1/tenants``, platform admins): create, list, read, change, export and
offboard a tenant, and open portal sessions for it. Mixed into
:class:`services.ingest.http.IngestApi`, whose route table (:data:`services.ingest.http.ROUTES`)
lists these handlers like every other.

Paths take a tenant's id or its external id. Offboarding (``DELETE``) removes the tenant's
endpoints (the signer forgets their secrets), their stored deliveries and message-log rows,
and revokes its tokens, in one transaction committed only once the broker confirmed every
control message; the audit log keeps its records (its chain stays verifiable) and gets a
``tenant.deleted`` record naming who did it.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any, get_args

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest.decisions import DeliveryStatus
from services.ingest.message_log import MessageLog
from services.ingest.settings import Settings
from services.ingest.store import Store, TokenRecord
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
from services.ingest.tenant_store import (
    ExternalIdTakenError,
    PortalCode,
    TenantRecord,
    TenantStore,
)
from shared.broker import Publisher
from shared.contracts import AuditFact, Contract, EndpointSecret, TokenGrant, utcnow
from shared.ids import new_id
from shared.web import authorize, error, hash_token, json_response, validation_error

log = structlog.get_logger("dihya.ingest.tenants")

EXPORT_PAGE = 500
"""Rows read per query while a tenant's export streams."""
_TENANT_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
"""A tenant id or external id: anything else names no tenant (404 before the database)."""


class TenantListQuery(BaseModel):
    """Query parameters of the tenant list (cursor pagination by id)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: int = Field(default=100, ge=1, le=1000, description="Items per page.")
    after: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$",
                              description="The `next` of the previous page.")


def _validate(model: type[Any], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _body(model: BaseModel, status: int = 200) -> web.Response:
    return json_response(model.model_dump(mode="json"), status=status)


def tenant_out(record: TenantRecord) -> TenantOut:
    return TenantOut(id=record.id, name=record.name, external_id=record.external_id,
                     metadata=record.metadata, created_at=record.created_at,
                     updated_at=record.updated_at)


def _taken(external_id: str | None) -> web.HTTPException:
    return error(409, "external_id_taken",
                 f"Another tenant already has the external id {str(external_id)[:128]!r}.")


def tenant_not_found(ref: str) -> web.HTTPException:
    return error(404, "not_found", f"No tenant with id or external id {ref[:128]!r}.")


class TenantApi:
    """The ``/v1/tenants`` handlers (see the module docstring)."""

    settings: Settings
    store: Store
    tenants: TenantStore
    publisher: Publisher
    log: MessageLog | None

    # provided by IngestApi (services/ingest/http.py), like the attributes above
    async def _json(self, request: web.Request) -> Any:
        raise NotImplementedError

    async def audit(self, fact: AuditFact) -> None:
        raise NotImplementedError

    def _fact(self, kind: Any, actor: str | None, **fields: Any) -> AuditFact:
        raise NotImplementedError

    async def _announce_all(self, messages: list[tuple[str, Contract]]) -> None:
        raise NotImplementedError

    async def _tenant(self, request: web.Request) -> TenantRecord:
        ref = request.match_info["id"]
        record = await self.tenants.get(ref) if _TENANT_PATH.fullmatch(ref) else None
        if record is None:
            raise tenant_not_found(ref)
        return record

    async def create_tenant(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin")
        data: TenantCreate = _validate(TenantCreate, await self._json(request))
        now = utcnow()
        record = TenantRecord(id=new_id("ten"), name=data.name, external_id=data.external_id,
                              metadata=dict(data.metadata), created_at=now, updated_at=now)
        try:
            async with self.store.transaction() as conn:
                await self.tenants.insert(conn, record)
        except ExternalIdTakenError:
            raise _taken(data.external_id) from None
        self.tenants.forget()  # a reference that named no tenant until now
        log.info("tenant_created", tenant=record.id, actor=principal.token_id)
        await self.audit(self._fact("tenant.created", principal.token_id, tenant=record.id,
                                    details={"external_id": record.external_id}))
        return _body(tenant_out(record), 201)

    async def list_tenants(self, request: web.Request) -> web.Response:
        await authorize(request, "admin")
        query: TenantListQuery = _validate(TenantListQuery, dict(request.query))
        records = await self.tenants.list(limit=query.limit + 1, after=query.after)
        page = records[: query.limit]
        nxt = page[-1].id if len(records) > query.limit else None
        return _body(TenantList(items=[tenant_out(r) for r in page], next=nxt))

    async def get_tenant(self, request: web.Request) -> web.Response:
        await authorize(request, "admin")
        return _body(tenant_out(await self._tenant(request)))

    async def update_tenant(self, request: web.Request) -> web.Response:
        principal = await authorize(request, "admin")
        record = await self._tenant(request)
        data: TenantUpdate = _validate(TenantUpdate, await self._json(request))
        changes: dict[str, Any] = {name: getattr(data, name) for name in data.model_fields_set
                                   if name == "external_id" or getattr(data, name) is not None}
        try:
            async with self.store.transaction() as conn:
                updated = await self.tenants.update(conn, record.id,
                                                    {**changes, "updated_at": utcnow()})
        except ExternalIdTakenError:
            raise _taken(changes.get("external_id")) from None
        if updated is None:
            raise tenant_not_found(record.id)
        await self.audit(self._fact("tenant.updated", principal.token_id, tenant=record.id,
                                    details={"fields": sorted(changes),
                                             "external_id": updated.external_id}))
        return _body(tenant_out(updated))

    async def delete_tenant(self, request: web.Request) -> web.Response:
        """Offboard a tenant (see the module docstring)."""
        principal = await authorize(request, "admin")
        record = await self._tenant(request)
        default = self.settings.default_tenant
        if default and await self.tenants.resolve(default) == record.id:
            raise error(409, "default_tenant",
                        f"Tenant {record.id} is DIHYA_DEFAULT_TENANT ({default!r}): events and "
                        "endpoints that name no tenant go to it. Unset that setting on every "
                        "ingest replica first.")
        now = utcnow()
        async with self.store.transaction() as conn:
            gone = await self.tenants.offboard(conn, record.id, now)
            await self._announce_all(
                [("secret.delete", EndpointSecret(endpoint_id=ep, action="delete",
                                                  issued_at=now))
                 for ep in gone.endpoint_ids]
                + [("token.revoked", TokenGrant(token_id=tok, role=role,
                                                token_hash=token_hash, revoked=True,
                                                issued_at=now, tenant=record.id))
                   for tok, role, token_hash in gone.token_ids])
        self.tenants.forget()
        log.info("tenant_deleted", tenant=record.id, endpoints=len(gone.endpoint_ids),
                 actor=principal.token_id)
        await self.audit(self._fact("tenant.deleted", principal.token_id, tenant=record.id,
                                    details={"external_id": record.external_id,
                                             "endpoint_ids": list(gone.endpoint_ids),
                                             "tokens_revoked": [t for t, _, _ in gone.token_ids],
                                             "stored_deliveries": gone.stored_deliveries,
                                             "logged_events": gone.logged_events}))
        return _body(TenantDeleted(id=record.id, endpoints=len(gone.endpoint_ids),
                                  tokens_revoked=len(gone.token_ids),
                                  stored_deliveries=gone.stored_deliveries,
                                  logged_events=gone.logged_events))

    async def export_tenant(self, request: web.Request) -> web.StreamResponse:
        """The tenant's data as JSON Lines, streamed page by page: the tenant, then per
        endpoint the endpoint (never a secret), its stored (failed, held, retried) deliveries
        and its message-log deliveries, then each logged event once with its retained payload
        (the tenant's own, those that reached none of its endpoints included, and the
        platform-wide ones that reached one). Its audit records: the audit service's export
        with ``tenant=``; ``dihya tenants export`` writes both into one file."""
        principal = await authorize(request, "admin")
        record = await self._tenant(request)
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="tenant-{record.id}.jsonl"'})
        await response.prepare(request)

        async def line(kind: str, value: Any) -> None:
            await response.write(orjson.dumps({"type": kind, **value}) + b"\n")

        await line("tenant", tenant_out(record).model_dump(mode="json"))
        event_ids: dict[str, None] = {}
        after: str | None = None
        while page := await self.store.list_endpoints(limit=EXPORT_PAGE, after=after,
                                                      tenant=record.id):
            for endpoint in page:
                await line("endpoint", orjson.loads(orjson.dumps(endpoint)))
                for status in get_args(DeliveryStatus):
                    await self._export_stored(line, endpoint.id, status)
                for event_id in await self._export_logged(line, endpoint.id):
                    event_ids[event_id] = None
            after = page[-1].id
        await self._own_events(record.id, event_ids)
        for event_id in event_ids:
            found = None if self.log is None else await self.log.get_event(event_id)
            if found is not None:
                event = found[0]
                await line("event", {"id": event.id, "event": event.event_type,
                                     "received_at": event.received_at.isoformat(),
                                     "payload": event.payload})
        await response.write_eof()
        log.info("tenant_exported", tenant=record.id, events=len(event_ids),
                 actor=principal.token_id)
        return response

    async def _own_events(self, tenant_id: str, event_ids: dict[str, None]) -> None:
        """Add to ``event_ids`` the tenant's logged events, those that reached none of its
        endpoints included."""
        if self.log is None:
            return
        last: str | None = None
        while page := await self.log.tenant_event_ids(tenant_id, limit=EXPORT_PAGE,
                                                      after=last):
            event_ids.update(dict.fromkeys(page))
            last = page[-1]

    async def _export_stored(self, line: Any, endpoint_id: str, status: DeliveryStatus
                             ) -> None:
        after: str | None = None
        while page := await self.store.list_deliveries(endpoint_id, status=status,
                                                       limit=EXPORT_PAGE, after=after):
            for stored in page:
                await line("stored_delivery", {
                    "delivery_id": stored.delivery_id, "endpoint_id": stored.endpoint_id,
                    "event_id": stored.event_id, "status": stored.status,
                    "reason": stored.reason, "failed_at": stored.failed_at.isoformat(),
                    "attempts": [a.model_dump(mode="json") for a in stored.job.history]})
            after = page[-1].delivery_id

    async def _export_logged(self, line: Any, endpoint_id: str) -> list[str]:
        """Write the endpoint's message-log deliveries; return their event ids."""
        if self.log is None:
            return []
        events: list[str] = []
        cursor: tuple[datetime, str] | None = None
        while page := await self.log.list_deliveries(status=None, endpoint_id=endpoint_id,
                                                     event_id=None, limit=EXPORT_PAGE,
                                                     after=cursor):
            for row in page:
                await line("delivery", orjson.loads(orjson.dumps(row)))
                events.append(row.event_id)
            cursor = (page[-1].created_at, page[-1].id)
        return events

    # -- portal sessions ------------------------------------------------------------------

    async def create_portal_session(self, request: web.Request) -> web.Response:
        """A link that opens the console for one tenant (see docs/tenants.md): a one-time
        code in the URL's fragment, exchanged once for a tenant-scoped, expiring token."""
        principal = await authorize(request, "admin")
        record = await self._tenant(request)
        data: PortalSessionCreate = _validate(PortalSessionCreate, await self._json(request))
        code = "dpc_" + secrets.token_urlsafe(32)
        now = utcnow()
        until = now + timedelta(seconds=self.settings.portal_code_ttl)
        await self.tenants.add_code(PortalCode(
            code_hash=hash_token(code), tenant_id=record.id, role=data.role, lang=data.lang,
            session_seconds=data.expires_in, created_by=principal.token_id, created_at=now,
            expires_at=until))
        await self.tenants.purge_codes(now - timedelta(days=1))
        base = self.settings.portal_url.rstrip("/") or str(request.url.origin())
        log.info("portal_session_created", tenant=record.id, role=data.role,
                 actor=principal.token_id)
        return _body(PortalSession(url=f"{base}/console/#portal={code}", code_expires_at=until,
                                   tenant=record.id, role=data.role,
                                   expires_in=data.expires_in), 201)

    async def exchange_portal_code(self, request: web.Request) -> web.Response:
        """Open a portal session: its code (once, while fresh) for its token. No token is
        needed: the code is the credential. Every failure looks the same (401)."""
        data: PortalExchange = _validate(PortalExchange, await self._json(request))
        now = utcnow()
        token = "dihya_" + secrets.token_urlsafe(32)  # the form of every API token
        async with self.store.transaction() as conn:
            code = await self.tenants.use_code(conn, hash_token(data.code), now)
            if code is None:
                raise error(401, "invalid_code", "This portal link is unknown, already used "
                            "or expired; ask for a new one.")
            tenant = await self.tenants.get(code.tenant_id, conn)
            assert tenant is not None  # use_code checked it, in this transaction
            record = TokenRecord(
                id=new_id("tok"), role=code.role, description="portal session",
                token_hash=hash_token(token), created_at=now, revoked_at=None,
                tenant_id=code.tenant_id,
                expires_at=now + timedelta(seconds=code.session_seconds))
            await self.store.insert_token(conn, record)
        log.info("portal_session_opened", tenant=code.tenant_id, token_id=record.id)
        await self.audit(self._fact("token.created", code.created_by, tenant=code.tenant_id,
                                    details={"token_id": record.id, "role": record.role,
                                             "via": "portal_session",
                                             "expires_at": (record.expires_at or now)
                                             .isoformat()}))
        settings = self.settings
        assert record.expires_at is not None
        return _body(PortalOpened(
            token=token, token_id=record.id, tenant=tenant.id, tenant_name=tenant.name,
            role=record.role, lang=code.lang, expires_at=record.expires_at,
            platform_name=settings.portal_name or None,
            accent=settings.portal_accent or None), 201)
