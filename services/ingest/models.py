"""Request and response bodies of the ingest HTTP API (pydantic; the OpenAPI schemas come
from these very models, so the document cannot drift from what the handlers accept).

Validation that depends on settings (the shortest secret an administrator may supply) reads the
validation context: ``model_validate(data, context={"secret_min_length": n})``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from services.ingest.catalog import UnknownPolicy
from services.ingest.decisions import DeliveryStatus, EndpointStatus
from shared import custom_headers
from shared.contracts import AttemptRecord, Lang, Ordering, RateLimit, Role, TenantRef
from shared.ordering import PATH_PATTERN
from shared.subscriptions import MAX_PATTERN, PATTERN_RE

DEFAULT_SECRET_MIN_LENGTH = 16
SECRET_MAX_LENGTH = 256
MAX_OVERLAP_SECONDS = 7 * 86400
MIN_RETRY_DELAY_SECONDS = 1
MAX_RETRY_DELAY_SECONDS = 2 * 86400
MAX_RETRY_DELAYS = 20


def _check_url(value: str) -> str:
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); the signature "
                         "authenticates deliveries")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def _whole(seconds: float) -> float | int:
    """``5.0`` is shown as ``5``: a schedule reads back as it was written."""
    return int(seconds) if seconds.is_integer() else seconds


def _dedupe(patterns: list[str]) -> list[str]:
    return list(dict.fromkeys(patterns))


def _check_secret(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    minimum = int((info.context or {}).get("secret_min_length", DEFAULT_SECRET_MIN_LENGTH))
    if len(value) < minimum:
        raise ValueError(f"must be at least {minimum} characters")
    if not all("!" <= ch <= "~" for ch in value):
        raise ValueError("must be printable ASCII without spaces")
    return value


Url = Annotated[
    str,
    Field(min_length=1, max_length=2048, description="http(s) URL the deliveries are POSTed to.",
          examples=["https://hooks.example.com/dihya"]),
    AfterValidator(_check_url),
]
Pattern = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PATTERN, pattern=PATTERN_RE.pattern,
          description="Event-type pattern: dot-separated words of `[a-z0-9_-]`; `*` matches "
          "exactly one word, `#` zero or more (RabbitMQ topic semantics)."),
]
Patterns = Annotated[
    list[Pattern],
    Field(min_length=1, max_length=64, examples=[["template.created", "incident.*"]]),
    AfterValidator(_dedupe),
]
Description = Annotated[str, Field(max_length=1024)]
Seconds = Annotated[
    float,
    PlainSerializer(_whole, return_type=Any, when_used="json"),
    WithJsonSchema({"type": "number"}, mode="serialization"),
]
RetryDelay = Annotated[
    Seconds,
    Field(ge=MIN_RETRY_DELAY_SECONDS, le=MAX_RETRY_DELAY_SECONDS, strict=True,
          allow_inf_nan=False),
]
RetrySchedule = Annotated[
    list[RetryDelay],
    Field(max_length=MAX_RETRY_DELAYS,
          description="This endpoint's own retry schedule: the delay in seconds (1 to 172800, "
          "millisecond precision) after each failed attempt, at most 20 delays; n delays = "
          "n + 1 attempts, `[]` = a single attempt and no retry. Each delay waits ±"
          "DIHYA_DELIVERER_RETRY_JITTER. Null or left out: the deployment's schedule "
          "(DIHYA_DELIVERER_RETRY_SCHEDULE).",
          examples=[[10, 60, 600, 3600]]),
]
Secret = Annotated[
    str,
    Field(max_length=SECRET_MAX_LENGTH,
          description="Signing secret: printable ASCII without spaces, at least "
          "DIHYA_INGEST_SECRET_MIN_LENGTH (default 16) characters. Leave it out to get a "
          "generated `whsec_` secret (recommended: Standard Webhooks libraries expect one)."),
]


SignatureScheme = Literal["hmac-sha256", "ed25519"]
SCHEME_DESCRIPTION = (
    "`hmac-sha256` (default): a shared secret signs `webhook-signature: v1,…` and "
    "`X-Dihya-Signature`. `ed25519`: Standard Webhooks `v1a` — Dihya keeps the `whsk_` "
    "signing key, the receiver verifies `webhook-signature: v1a,…` with the endpoint's `whpk_` "
    "public key (`public_keys`); no `X-Dihya-Signature`. Fixed at creation.")


class PublicKeyOut(BaseModel):
    """An ed25519 public key receivers verify `v1a` signatures with."""

    model_config = ConfigDict(frozen=True)
    key: str = Field(description="`whpk_` + base64 of the 32-byte ed25519 public key.")
    valid_until: datetime | None = Field(
        description="null: the current key; else a previous key, still signing until then "
        "(rotation overlap).")


def _check_headers(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > custom_headers.MAX_HEADERS:
        raise ValueError(f"at most {custom_headers.MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, header in value.items():
        why = custom_headers.refusal(name, header)
        if why is not None:
            raise ValueError(f"{name[:64]!r} {why}")
        if name.lower() in seen:
            raise ValueError(f"{name[:64]!r} is given twice (names are case-insensitive)")
        seen.add(name.lower())
    return value


CustomHeaders = Annotated[
    dict[str, str],
    Field(description="Static headers added to every delivery (e.g. an API-gateway key), "
          "at most 20. Stored encrypted in the signer's keystore like the secret, shown masked, "
          "never logged or audited. Refused: `Content-Type`, `Content-Length`, `Host`, "
          "`User-Agent`, hop-by-hop headers, `traceparent`, and any `webhook-*` or "
          "`X-Dihya-*` name.", examples=[{"X-Api-Key": "gw-key-…"}]),
    AfterValidator(_check_headers),
]
MASK = "********"
RATE_LIMIT_DESCRIPTION = (
    "At most `per_second` deliveries a second (0.01 to 10000), `burst` (default 1) of them "
    "back to back after a quiet spell; enforced across every deliverer replica. A receiver's "
    "429/503 `Retry-After` still wins: the endpoint gets nothing until then. Null: not "
    "limited.")

ORDERING_DESCRIPTION = (
    "`fifo`: deliveries of one ordering key reach the endpoint one at a time, in the order "
    "ingest accepted the events; a failing delivery holds the later ones of its key until it "
    "is delivered or dead-lettered (docs/ordering.md). Not with `rate_limit`. Null: no order "
    "(deliveries in parallel).")
ORDERING_KEY_DESCRIPTION = (
    "With `ordering: fifo`: the dotted path in the event whose value is the ordering key, "
    "e.g. `data.user_id` (one to eight names of letters, digits, `_`, `-`). Events without "
    "it share the empty key. Null: the whole endpoint is one key.")
OrderingKey = Annotated[str, Field(max_length=600, pattern=PATH_PATTERN,
                                   description=ORDERING_KEY_DESCRIPTION,
                                   examples=["data.user_id"])]


def check_ordering(ordering: str | None, ordering_key: str | None,
                   rate_limit: RateLimit | None) -> None:
    """``ValueError`` for a combination an endpoint may not have."""
    if ordering_key is not None and ordering != "fifo":
        raise ValueError("ordering_key: needs ordering fifo")
    if ordering == "fifo" and rate_limit is not None:
        raise ValueError("ordering: fifo cannot be combined with rate_limit (a rate limit is "
                         "paced per deliverer process, an ordered endpoint's keys may be "
                         "delivered by several)")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointCreate(Request):
    """Register a webhook endpoint."""

    url: Url
    events: Patterns
    description: Description | None = None
    secret: Secret | None = None
    retry_schedule: RetrySchedule | None = None
    signature_scheme: SignatureScheme = Field(default="hmac-sha256",
                                              description=SCHEME_DESCRIPTION)
    headers: CustomHeaders | None = None
    rate_limit: RateLimit | None = Field(default=None, description=RATE_LIMIT_DESCRIPTION,
                                         examples=[{"per_second": 5, "burst": 10}])
    ordering: Ordering | None = Field(default=None, description=ORDERING_DESCRIPTION)
    ordering_key: OrderingKey | None = None
    tenant: TenantRef | None = Field(
        default=None, description="Its tenant (id or external id). A tenant-scoped token "
        "implies its own; otherwise required unless the deployment sets DIHYA_DEFAULT_TENANT.")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_secret(value, info)

    @model_validator(mode="after")
    def _generated_key(self) -> EndpointCreate:
        if self.signature_scheme == "ed25519" and self.secret is not None:
            raise ValueError("secret: leave it out with signature_scheme ed25519 (Dihya "
                             "generates the signing key and shows you the public key)")
        check_ordering(self.ordering, self.ordering_key, self.rate_limit)
        return self


class EndpointUpdate(Request):
    """Change an endpoint; fields left out stay as they are (`description: null` clears it,
    `retry_schedule: null` returns it to the deployment's schedule)."""

    url: Url | None = None
    events: Patterns | None = None
    description: Description | None = None
    status: EndpointStatus | None = None
    retry_schedule: RetrySchedule | None = None
    headers: CustomHeaders | None = Field(
        default=None, description="Replaces all its custom headers (`{}` or null: none).")
    rate_limit: RateLimit | None = Field(
        default=None, description=RATE_LIMIT_DESCRIPTION + " `null` removes the limit.")
    ordering: Ordering | None = Field(
        default=None, description=ORDERING_DESCRIPTION + " `null` removes the order. "
        "Deliveries already on their way keep the path they took.")
    ordering_key: OrderingKey | None = Field(
        default=None, description=ORDERING_KEY_DESCRIPTION + " Changing it (or the order) "
        "while deliveries are on their way may deliver a few of them out of the new order.")

    @field_validator("url", "events", "status", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may be left out but not null")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> EndpointUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one of: url, events, description, status, "
                             "retry_schedule, headers, rate_limit, ordering, ordering_key")
        return self


class SecretRotate(Request):
    """Rotate an endpoint's secret; the previous one keeps signing during the overlap."""

    secret: Secret | None = None
    overlap_seconds: int = Field(
        default=86400, ge=0, le=MAX_OVERLAP_SECONDS,
        description="How long the previous secret stays valid (signatures with both are sent).",
    )

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_secret(value, info)


class TokenCreate(Request):
    """Issue an API token."""

    role: Role
    description: Description | None = None
    tenant: TenantRef | None = Field(
        default=None, description="Required with the roles `tenant_admin` and "
        "`tenant_viewer` (the tenant the token acts for, id or external id); not allowed "
        "with the platform roles.")

    @model_validator(mode="after")
    def _tenant_role(self) -> TokenCreate:
        scoped = self.role in ("tenant_admin", "tenant_viewer")
        if scoped and self.tenant is None:
            raise ValueError(f"tenant: required with role {self.role}")
        if not scoped and self.tenant is not None:
            raise ValueError(f"tenant: not allowed with the platform role {self.role}")
        return self


class RecoverRequest(Request):
    """Re-send an endpoint's failed deliveries since a time, and all its held ones."""

    since: AwareDatetime = Field(
        description="ISO-8601 with an offset: failed deliveries that failed at or after it "
        "are sent again. Held deliveries (kept while the endpoint was disabled) are always "
        "included.", examples=["2025-05-20T00:00:00Z"])

    @field_validator("since")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        try:  # stored times are UTC; 0001-01-01T00:00+05:00 has no UTC equivalent
            return value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("is out of range") from None


class EndpointTest(Request):
    """Send a test event of a type to this one endpoint."""

    event: str = Field(
        default="dihya.test", min_length=1, max_length=128,
        pattern=r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$",
        description="The event type; its `data` is the catalog's example (each placeholder "
        "`example-<name>`) with `test: true`, its `details` completed from the catalog.")
    lang: Lang | None = None


class Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class EndpointOut(Response):
    id: str
    url: str
    tenant: str = Field(default="ten_default", description="Its tenant's id (`ten_…`).")
    events: list[str]
    description: str | None
    status: EndpointStatus
    created_at: datetime
    updated_at: datetime
    disabled_reason: str | None = Field(
        default=None, description="Why it is disabled: `gone` (answered 410), `failing` "
        "(failed for DIHYA_INGEST_DISABLE_AFTER), `manual`; null when enabled.")
    disabled_at: datetime | None = None
    failing_since: datetime | None = Field(
        default=None, description="Start of the current run of failed attempts; null when "
        "the last attempt was delivered.")
    retry_schedule: list[Seconds] | None = Field(
        default=None, description="Its own retry delays in seconds (`[]`: a single attempt); "
        "null: the deployment's schedule.")
    signature_scheme: SignatureScheme = Field(default="hmac-sha256",
                                              description=SCHEME_DESCRIPTION)
    public_keys: list[PublicKeyOut] | None = Field(
        default=None, description="`ed25519` endpoints: the public keys that sign its "
        "deliveries, current first (two during a rotation overlap); null for `hmac-sha256`.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Its custom headers, values masked (`********`).")
    rate_limit: RateLimit | None = Field(default=None, description=RATE_LIMIT_DESCRIPTION)
    ordering: Ordering | None = Field(default=None, description=ORDERING_DESCRIPTION)
    ordering_key: str | None = Field(default=None, description=ORDERING_KEY_DESCRIPTION)


class EndpointPatched(EndpointOut):
    held_deliveries: int = Field(
        description="Deliveries kept while the endpoint was disabled. After re-enabling, "
        "send them with `POST /v1/endpoints/{id}/recover`.")


class EndpointCreated(EndpointOut):
    secret: str | None = Field(description="The signing secret. Shown this once; store it "
                               "now. Null for `ed25519`: verify with `public_keys`.")


class EndpointList(Response):
    items: list[EndpointListItem]
    next: str | None = Field(description="Pass as `after` to get the next page; null at the end.")


class SecretRotated(Response):
    id: str
    secret: str | None = Field(description="The new signing secret. Shown this once. Null "
                               "for `ed25519`: the new key is `public_key`.")
    public_key: str | None = Field(default=None, description="`ed25519`: the new current "
                                   "`whpk_` public key (the previous one stays valid for "
                                   "the overlap); null for `hmac-sha256`.")
    previous_valid_until: datetime


class EventAccepted(Response):
    id: str = Field(description="The event id every delivery of this event carries.")
    event: str


class EventTypeOut(Response):
    """A known event type: what it means, and the templates that complete its `details`."""

    event: str = Field(description="The event type, e.g. `template.created`.")
    description: dict[Lang, str] = Field(description="What it means, in fr, en, ar and tzm.")
    details: dict[Lang, str] = Field(
        description="The `details` template of each language; `{name}` stands for the "
        "event's `data.name`. A language the publisher left out is filled from it.")
    placeholders: list[str] = Field(
        description="The `data` keys the templates use: without them (or when one is not a "
        "string or number) the language is not completed.")
    internal: bool = Field(description="Emitted by Dihya itself; always known.")
    awaiting_native_review: list[Lang] = Field(
        default_factory=list,
        description="Languages whose description and template await a native speaker's "
        "review (the catalog's `awaiting_native_review`); shown beside those texts.")


class EventTypeList(Response):
    """The event-type catalog ingest uses (DIHYA_INGEST_EVENT_CATALOG)."""

    items: list[EventTypeOut]
    unknown_event_types: UnknownPolicy = Field(
        description="What happens to a type not listed (DIHYA_INGEST_UNKNOWN_EVENT_TYPES): "
        "`accept` (delivered unchanged) or `refuse` (422 `unknown_event_type`).")


class TokenOut(Response):
    id: str
    role: Role
    tenant: str | None = Field(default=None, description="The tenant of a tenant-scoped "
                               "token (`ten_…`); null for platform roles.")
    description: str | None
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The bearer token. Shown this once; only its hash is kept.")


class TokenList(Response):
    items: list[TokenOut]
    next: str | None


class WhoAmI(Response):
    """The caller, as its token identifies it (the console signs in with this)."""

    token_id: str = Field(description="Id of the token (`tok_bootstrap_admin` for "
                          "DIHYA_ADMIN_TOKEN); safe to show and log.")
    role: Role
    tenant: str | None = Field(default=None, description="The tenant a tenant-scoped token "
                               "acts for; null for platform roles.")


class DeliveryOut(Response):
    """A stored delivery: failed (given up by the pipeline), held or retried."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    reason: str = Field(description="`exhausted`, `gone`, `ssrf_blocked`, `no_secret`, "
                        "`delivery_limit`, `endpoint_disabled` (held), …")
    error: str | None
    failed_at: datetime = Field(description="When it was parked (or held).")
    next_attempt: int = Field(description="The attempt number a retry would carry.")
    attempts: list[AttemptRecord] = Field(description="Every attempt made, oldest first.")
    retried_at: datetime | None
    retried_by: str | None = Field(description="Token id of the administrator who resent it.")


class DeliveryList(Response):
    items: list[DeliveryOut]
    next: str | None = Field(description="Pass as `after` to get the next page; null at the end.")


class RetryAccepted(Response):
    """The delivery was handed to the signer again (confirmed by the broker)."""

    delivery_id: str
    endpoint_id: str
    attempt: int
    status: DeliveryStatus


class RecoverAccepted(Response):
    """The deliveries were handed to the signer again (confirmed by the broker)."""

    endpoint_id: str
    count: int
    delivery_ids: list[str]


class ParkedOut(Response):
    """A message from a parking queue that is no delivery job, kept verbatim."""

    id: str
    queue: str = Field(description="The parking queue it came from.")
    reason: str
    error: str | None
    headers: dict[str, JsonValue] = Field(description="Its AMQP headers (x-death included).")
    body: str = Field(description="The body as UTF-8 text (invalid bytes replaced).")
    body_base64: str = Field(description="The exact body, base64.")
    parked_at: datetime


class ParkedList(Response):
    items: list[ParkedOut]
    next: str | None = Field(description="Pass as `after` to get the next page; null at the end.")


class FieldError(Response):
    field: str
    message: str


class ErrorDetail(Response):
    code: str
    message: str
    fields: list[FieldError]
    event_id: str | None = Field(
        default=None, description="With `broker_unconfirmed` (a 503 of `POST /v1/events`): "
        "the id of the event that may or may not have been accepted. Retry with the same "
        "Idempotency-Key, or with this as the body's `id`: it is delivered once.")


class ErrorBody(Response):
    error: ErrorDetail


# -- the message log ------------------------------------------------------------------------

LogStatusField = Literal["pending", "delivered", "failed", "held", "retried"]


class DeliveryCounts(Response):
    """An event's deliveries by status (`retried` ones count as `pending`: sent again, their
    next attempt not yet seen)."""

    total: int
    delivered: int
    failed: int
    pending: int
    held: int


class EventSummary(Response):
    id: str
    event: str = Field(description="The event type.")
    received_at: datetime = Field(description="When ingest accepted and fanned it out.")
    lang: Lang | None
    deliveries: DeliveryCounts


class EventPage(Response):
    """Events, newest first."""

    items: list[EventSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; "
                                    "null at the end.")


class AttemptOut(Response):
    """One HTTP attempt of a delivery."""

    attempt: int
    at: datetime = Field(description="When the request started.")
    outcome: Literal["delivered", "failed"]
    status_code: int | None = Field(description="The receiver's HTTP status; null when no "
                                    "response came (see `error`).")
    latency_ms: float | None
    request_headers: dict[str, str] = Field(
        description="The headers sent, signature values shortened (`v1,K5oZfzN9…`).")
    response_headers: dict[str, str] = Field(
        description="The receiver's response headers (at most 30; cookies and "
        "authentication headers left out).")
    response_excerpt: str | None = Field(description="The start of the response body.")
    error: str | None


class LogDeliveryOut(Response):
    """One delivery of an event to one endpoint, with every attempt."""

    id: str
    endpoint_id: str
    url: str
    status: LogStatusField = Field(
        description="`pending` (on its way or awaiting a retry), `delivered`, `failed` (given "
        "up; retry or resend it), `held` (kept while the endpoint was disabled) or `retried` "
        "(sent again by an administrator, its next attempt not yet seen).")
    next_retry_at: datetime | None = Field(description="When the next automatic attempt is "
                                           "due; null when none is scheduled.")
    attempts: list[AttemptOut]


class EventDetail(Response):
    """An event as delivered, and every delivery and attempt of it."""

    id: str
    event: str
    received_at: datetime
    payload: dict[str, JsonValue] | None = Field(
        description="The payload as delivered (its `details` completed); null once no longer "
        "retained (DIHYA_INGEST_PAYLOAD_RETENTION_DAYS) or erased with its data subject.")
    deliveries: list[LogDeliveryOut]


class DeliverySummary(Response):
    """A delivery in the message log (its attempts: `GET /v1/events/{event_id}`)."""

    id: str
    endpoint_id: str
    url: str
    status: LogStatusField
    next_retry_at: datetime | None
    event_id: str
    event: str | None = Field(description="The event type (null if the event is no longer "
                              "in the log).")
    attempts_count: int
    last_attempt_at: datetime | None


class DeliveryPage(Response):
    """Deliveries, newest first."""

    items: list[DeliverySummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; "
                                    "null at the end.")


class ResendAccepted(Response):
    """The delivery was handed to the signer again (confirmed by the broker)."""

    delivery_id: str
    attempt: int = Field(description="The attempt number the new attempt carries.")


class TestSent(Response):
    """The test event's one delivery was handed to the signer (confirmed by the broker)."""

    id: str = Field(description="The test event's id (see `GET /v1/events/{id}`).")
    event: str
    delivery_id: str


class RetryFailedAccepted(Response):
    """The endpoint's failed deliveries were handed to the signer again."""

    retried: int


class HourOut(Response):
    hour: datetime = Field(description="Start of the hour (UTC).")
    delivered: int
    failed: int


class EndpointHealth(Response):
    """An endpoint's delivery health over the last 24 hours (from the message log)."""

    state: Literal["enabled", "failing", "disabled"] = Field(
        description="`failing`: enabled, but its attempts fail since `failing_since`.")
    attempts: int
    delivered: int
    failed: int
    success_rate: float | None = Field(description="delivered / attempts (0 to 1); null "
                                       "without attempts.")
    last_delivery_at: datetime | None = Field(description="Its last delivered attempt.")
    hours: list[HourOut] = Field(description="Attempts by outcome per hour, 24 hours, oldest "
                                 "first, the current hour last.")


class EndpointHealthOut(EndpointHealth):
    endpoint_id: str


class EndpointListItem(EndpointOut):
    health: EndpointHealth | None = Field(
        default=None, description="With `include=health`: its last 24 hours; else null.")


class SubjectEvent(Response):
    id: str
    event: str
    received_at: datetime
    payload: dict[str, JsonValue] | None


class SubjectExport(Response):
    """What ingest's message log holds about one data subject (GDPR Art. 15): the retained
    payloads of the events whose `data.user_id` is the subject."""

    subject: str
    events: list[SubjectEvent]


class SubjectErased(Response):
    """The subject's payloads are gone from the message log (GDPR Art. 17)."""

    subject_events: int = Field(description="Events whose payload and subject link were "
                                "removed.")


EndpointList.model_rebuild()  # its items are declared further down
