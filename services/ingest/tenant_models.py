"""Request and response bodies of the tenant API (``/v1/tenants``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, JsonValue

from services.ingest.models import Request, Response
from shared.contracts import ExternalId, Lang

TenantName = Annotated[str, Field(min_length=1, max_length=255,
                                  description="Shown in the console; need not be unique.")]
def _not_an_id(value: str) -> str:
    if value.startswith("ten_"):
        raise ValueError("must not start with `ten_` (tenant ids do)")
    return value


TenantExternalId = Annotated[ExternalId, Field(
    description="The platform's own id of this customer: unique, and usable wherever a "
    "tenant id is (events' `tenant`, endpoints' `tenant`, paths). Cannot start with `ten_`.",
    examples=["customer-42"]), AfterValidator(_not_an_id)]
Metadata = Annotated[dict[str, JsonValue], Field(
    max_length=50, description="Free-form, for the platform's own use (at most 50 keys).")]


class TenantCreate(Request):
    """Create a tenant: one of the platform's customers."""

    name: TenantName
    external_id: TenantExternalId | None = None
    metadata: Metadata = Field(default_factory=dict)


class TenantUpdate(Request):
    """Change a tenant's name, external id or metadata (fields left out keep their value)."""

    name: TenantName | None = None
    external_id: TenantExternalId | None = None
    metadata: Metadata | None = None


class TenantOut(Response):
    id: str = Field(description="`ten_…`")
    name: str
    external_id: str | None
    metadata: dict[str, JsonValue]
    created_at: datetime
    updated_at: datetime


class TenantList(Response):
    items: list[TenantOut]
    next: str | None = Field(description="Pass as `after` to get the next page; null at the end.")


class TenantDeleted(Response):
    """What offboarding the tenant removed (also in its `tenant.deleted` audit record)."""

    id: str
    endpoints: int
    tokens_revoked: int
    stored_deliveries: int
    logged_events: int


class PortalSessionCreate(Request):
    """Open the console for one tenant: a link for the platform to show its customer."""

    role: Literal["tenant_admin", "tenant_viewer"] = Field(
        default="tenant_viewer", description="What the customer may do in the console.")
    lang: Lang | None = Field(default=None, description="The console's language.")
    expires_in: int = Field(default=3600, ge=60, le=86400,
                            description="Seconds the session lasts once opened (1 h).")


class PortalSession(Response):
    url: str = Field(description="Open it (or put it in an iframe) within `code_expires_at`: "
                     "its one-time code sits in the fragment (never sent to a server, so never "
                     "in an access log) and is exchanged once for the session.")
    code_expires_at: datetime
    tenant: str
    role: str
    expires_in: int


class PortalExchange(Request):
    """Exchange a portal link's one-time code for the session's token."""

    code: str = Field(min_length=1, max_length=128)


class PortalOpened(Response):
    token: str = Field(description="The session's bearer token (tenant-scoped, expiring). "
                       "The console keeps it in this tab's sessionStorage only.")
    token_id: str
    tenant: str
    tenant_name: str
    role: str
    lang: str | None
    expires_at: datetime
    platform_name: str | None
    accent: str | None
