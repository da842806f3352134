"""Ingest settings (environment variables prefixed ``DIHYA_INGEST_``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.ingest.catalog import TzmScript, UnknownPolicy
from shared.egress import EgressSettings


class Settings(EgressSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIHYA_INGEST_", extra="ignore", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Address the HTTP API binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    database_url: str = Field(
        default="sqlite:///./data/ingest.db",
        description="Storage DSN: `sqlite:///path` (default) or `postgresql://…` "
        "(required to run several ingest replicas).",
    )
    max_body_bytes: int = Field(
        default=262144, ge=1024, le=16 * 1024 * 1024,
        description="Largest accepted event, over HTTP (413) and over AMQP (parked and audited), "
                    "and largest HTTP request body.",
    )
    endpoint_cache_ttl: float = Field(
        default=1.0, ge=0,
        description="Seconds the endpoint list used for fan-out is cached. Changes made "
        "through this replica apply to the next event at once; changes made through another "
        "replica within this delay. 0 reads the database for every event.",
    )
    idempotency_window: int = Field(
        default=86400, ge=0,
        description="Seconds an `Idempotency-Key` is remembered per token (a reuse within the "
        "window replays the first answer, later it starts a new event), and seconds the id of "
        "a fanned-out event is remembered (the same id arriving again over AMQP, e.g. the same "
        "`message_id`, is acked without publishing again). 0 disables both.",
    )
    disable_after: int = Field(
        default=5 * 86400, ge=1,
        description="Seconds an endpoint may keep failing (no delivered attempt in between) "
        "before it is disabled; a 410 Gone disables it at once.",
    )
    failing_after: int = Field(
        default=5, ge=0,
        description="Consecutive failed attempts after which the operational event "
        "`endpoint.failing` is published (once per run of failures; `endpoint.recovered` "
        "follows the next delivered attempt). 0: never.",
    )
    prefetch: int = Field(
        default=200, ge=1, le=2000,
        description="Unacked events the consumer works on at once (quorum queues cap it at 2000).",
    )
    event_catalog: Path | None = Field(
        default=None,
        description="JSON event-type catalog to use instead of the bundled one "
        "(`services/ingest/event_types.json`, same format): each known type's description and "
        "`details` templates in fr, en, ar and tzm, used to complete the `details` languages a "
        "publisher left out. The platform's own types (the operational events "
        "`endpoint.disabled`, `endpoint.failing`, `endpoint.recovered`, `delivery.exhausted`, "
        "and `dihya.test`) are added if missing. Unset: the bundled catalog.",
    )
    tzm_script: TzmScript = Field(
        default="latin", validation_alias="DIHYA_TZM_SCRIPT",
        description="Script of the catalog's Tamazight (`tzm`) texts that complete an event's "
        "`details`: `latin`, as the guide writes it (\"Yettwarna template amaynut\"), or "
        "`tifinagh`. A `tzm` text the publisher wrote is delivered as written. The CLI reads "
        "the same variable for its own messages.",
    )
    unknown_event_types: UnknownPolicy = Field(
        default="accept",
        description="Event types not in the catalog: `accept` (fan them out unchanged) or "
        "`refuse` (HTTP 422 `unknown_event_type`; over AMQP parked with that reason and "
        "audited). `accept` by default because event types are the platform's to define: the "
        "bundled catalog knows only the guide's examples, and refusing would drop every other "
        "publisher's events. Choose `refuse` once your catalog lists all your types, to catch "
        "misspelt ones at the door.",
    )
    max_fanout: int = Field(
        default=1000, ge=1,
        description="Most endpoints one event may fan out to. An event matching more is not "
        "delivered at all: it is parked with reason `fanout_limit` and audited, so an operator "
        "decides (raise the limit, then move it back from the parking queue).",
    )
    message_log: bool = Field(
        default=True,
        description="Record every event, delivery and attempt for the console's message log "
        "and `GET /v1/events` (measured on SQLite: about 0.25 ms of ingest time per event "
        "fanned out, in batches). `false`: nothing is recorded (the log stays empty; failed "
        "and held deliveries are still stored for retry).",
    )
    payload_retention_days: float = Field(
        default=30, ge=0, le=3650,
        description="Days the message log keeps each event's payload (personal data, its "
        "subject being `data.user_id`: the console's event page shows it, "
        "`GET /v1/subjects/{subject}/export` includes it, "
        "`POST /v1/subjects/{subject}/erasure` removes it). Older payloads are purged every "
        "few minutes; the event's deliveries and attempts stay in the log. 0: payloads are "
        "never stored.",
    )
    message_log_days: float = Field(
        default=90, ge=1, le=3650,
        description="Days the message log keeps events, deliveries and attempts (ids, "
        "statuses, response headers and excerpts) before they are deleted.",
    )
    secret_min_length: int = Field(
        default=16, ge=8, le=256,
        description="Shortest endpoint secret an administrator may supply.",
    )
    console_enabled: bool = Field(
        default=True,
        description="Serve the web console at `/console/` on the HTTP API's port "
        "(static files; it signs in with an API token). `false` removes it.",
    )
    console_audit_url: str = Field(
        default="",
        description="Base URL of the audit API as the console's browser reaches it, e.g. "
        "`https://audit.example.com`; the audit service must list the console's origin in "
        "`DIHYA_AUDIT_CORS_ORIGINS`. Empty: the console hides the audit log, delivery "
        "attempts and test results, and says why.",
    )

    default_tenant: str | None = Field(
        default=None, validation_alias="DIHYA_DEFAULT_TENANT",
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="Tenant (id or external id) of an event or endpoint that names none. "
        "Unset: such an event is refused (HTTP 422 `tenant_missing`; over AMQP parked with "
        "that reason and audited) and an endpoint must name its tenant. Set it to `default` "
        "to keep a single-tenant deployment's publishers and scripts working unchanged: the "
        "upgrade moved every existing endpoint to the tenant `default`.",
    )
    tenant_max_endpoints: int = Field(
        default=1000, ge=0,
        description="Most endpoints one tenant may have (409 `tenant_quota_exceeded` beyond). "
        "0: no limit.",
    )
    tenant_events_per_second: float = Field(
        default=0, ge=0,
        description="Events per second one tenant may publish (bursts of one second's worth), "
        "shared by every ingest replica on one PostgreSQL database (per replica on SQLite). "
        "Over it: HTTP 429 `tenant_rate_limited` with `Retry-After`; "
        "over AMQP the event is parked with reason `tenant_rate_limited` and audited (move it "
        "back once the burst is over). Platform-wide events are not counted. 0: no limit.",
    )

    portal_url: str = Field(
        default="",
        description="Base URL of the console as the tenants' browsers reach it, for the links "
        "of portal sessions (e.g. `https://webhooks.example.com`). Empty: the address the "
        "request creating the session was sent to.",
    )
    portal_code_ttl: int = Field(
        default=300, ge=10, le=3600,
        description="Seconds the one-time code of a portal session's link stays valid (it is "
        "exchanged once for the session, which then lasts its own `expires_in`).",
    )
    portal_frame_ancestors: str = Field(
        default="",
        description="Origins allowed to embed the console in an iframe (the CSP "
        "`frame-ancestors` of the console's pages), space-separated, e.g. "
        "`https://app.example.com`. Empty: none — the console cannot be framed.",
    )
    portal_name: str = Field(
        default="", max_length=80,
        description="The platform's name shown in the console's header during a portal "
        "session. Empty: Dihya's own.",
    )
    portal_accent: str = Field(
        default="", pattern=r"^(#[0-9a-fA-F]{6})?$",
        description="The platform's accent colour for portal sessions (`#rrggbb`). Empty: "
        "the console's own.",
    )

    @field_validator("portal_frame_ancestors")
    @classmethod
    def _check_ancestors(cls, value: str) -> str:
        for origin in value.split():
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or (
                    parts.path not in ("", "/")) or parts.query or parts.fragment:
                raise ValueError(f"{origin!r} is not an origin (https://host[:port])")
        return " ".join(value.split())

    @field_validator("default_tenant", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("console_audit_url")
    @classmethod
    def _check_audit_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL naming a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, a fragment or credentials")
        return value
