"""Message contracts: the only thing Dihya's services have in common.

Every contract is a frozen pydantic model that forbids unknown fields. Internal messages carry
their name and version in a ``type`` field (``dihya.delivery_job.v1``); the public
:class:`Event` keeps the guide's payload template as its body, so its version travels in the
AMQP ``type`` property instead (see :data:`EVENT_TYPE_TAG`). A breaking change means a new
model with a new version tag, never an edit of an old one: ``tests/contracts`` compares each
model with its JSON Schema committed under ``shared/schemas/`` and fails when they disagree.

Wire format: UTF-8 JSON, encoded by pydantic's serialiser (:func:`encode`), decoded by the
receiving model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    field_serializer,
)

EVENT_TYPE_TAG = "dihya.event.v1"
"""AMQP ``type`` property of an :class:`Event` message; optional for publishers."""

EventType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$",
        description="Dot-separated lowercase words, e.g. `template.created`.",
        examples=["template.created", "incident.security"],
    ),
]
ExternalId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="An identifier: letters, digits and `_ . : -`.",
    ),
]
Lang = Literal["fr", "en", "ar", "tzm"]
Role = Literal["admin", "publisher", "auditor", "viewer", "tenant_admin", "tenant_viewer"]
"""``admin``, ``publisher``, ``auditor`` and ``viewer`` are platform roles; ``tenant_admin`` and
``tenant_viewer`` act within one tenant only (their token names it)."""
TenantRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="A tenant: its id (`ten_…`) or its `external_id` (the platform's own "
        "customer id).",
        examples=["ten_01hzy5b0c8", "customer-42"],
    ),
]
ServiceName = Literal["ingest", "signer", "deliverer", "audit"]
Ordering = Literal["fifo"]
"""An endpoint's delivery order: ``fifo`` (per ordering key, docs/ordering.md)."""


class Contract(BaseModel):
    """Base of every contract: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


ContractT = TypeVar("ContractT", bound=Contract)


class Event(Contract):
    """A domain event, as a platform service publishes it: the guide's payload template.

    Publishers may leave out ``id`` and ``timestamp``; ingest fills them in before fan-out, and
    every delivery of the event carries the same ``id``.
    """

    TYPE: ClassVar[str] = EVENT_TYPE_TAG

    id: ExternalId | None = None
    event: EventType
    timestamp: AwareDatetime | None = None
    lang: Lang | None = None
    data: dict[str, JsonValue]
    tenant: TenantRef | None = Field(
        default=None,
        description="The tenant whose endpoints receive the event (id or external id). "
        "Required unless `all_tenants` is true or the deployment sets DIHYA_DEFAULT_TENANT. "
        "Not part of the delivered body.")
    all_tenants: bool | None = Field(
        default=None,
        description="true: a platform-wide event, fanned out to the subscribed endpoints of "
        "every tenant. Must be asked for explicitly; cannot be combined with `tenant`. "
        "Absent (or false): one tenant's event.")


class AttemptRecord(Contract):
    """What one delivery attempt gave; kept with the job so a dead letter has its history."""

    attempt: int = Field(ge=1)
    at: AwareDatetime
    outcome: Literal["delivered", "failed"]
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None


class RateLimit(Contract):
    """An endpoint's delivery rate limit: at most ``per_second`` deliveries a second on
    average, ``burst`` of them back to back after a quiet spell (a GCRA, see
    ``docs/endpoints.md``)."""

    per_second: float = Field(ge=0.01, le=10_000, allow_inf_nan=False,
                              description="Deliveries per second (0.01 to 10000).")
    burst: int = Field(default=1, ge=1, le=1_000,
                       description="Deliveries that may go back to back after a quiet spell; "
                       "1: evenly spaced.")


class DeliveryJob(Contract):
    """One event to deliver to one endpoint (ingest → signer, and deliverer → signer on retry)."""

    type: Literal["dihya.delivery_job.v1"] = "dihya.delivery_job.v1"
    delivery_id: str = Field(description="`dlv_…`: stable across every attempt.")
    endpoint_id: str
    url: str
    event: Event = Field(description="The accepted event: `id` and `timestamp` are set.")
    attempt: int = Field(default=1, ge=1)
    history: tuple[AttemptRecord, ...] = ()
    deferrals: int = Field(
        default=0, ge=0,
        description="Times the deliverer put this attempt back because its endpoint had too "
        "many deliveries in flight; each deferral waits twice as long as the one before "
        "(DIHYA_DELIVERER_DEFER_DELAY up to DIHYA_DELIVERER_DEFER_MAX). Not an attempt.",
    )
    tenant: str | None = Field(
        default=None, description="`ten_…`: the tenant of the endpoint (carried into the "
        "audit facts of every attempt); null from ingests older than tenants.")
    retry_schedule_ms: tuple[Annotated[int, Field(gt=0)], ...] | None = Field(
        default=None,
        description="The endpoint's own retry schedule: the delay in milliseconds after each "
        "failed attempt (n delays = n + 1 attempts; empty = a single attempt). Null: the "
        "deployment's schedule (DIHYA_DELIVERER_RETRY_SCHEDULE).",
    )
    rate_limit: RateLimit | None = Field(
        default=None,
        description="The endpoint's rate limit; the deliverer paces its deliveries through "
        "the paced queues (one active consumer each). Null: not limited.",
    )
    fifo_key: str | None = Field(
        default=None, max_length=256,
        description="Set for an ordered (`ordering: fifo`) endpoint: the delivery's ordering "
        "key (the value at the endpoint's `ordering_key` in the event; \"\": none). Its "
        "deliveries of one key go one at a time, in the order ingest accepted the events, "
        "through one FIFO lane (docs/ordering.md). Null: not ordered.",
    )


class SignedDelivery(Contract):
    """A job with the exact body and headers to POST (signer → deliverer). No secret inside."""

    type: Literal["dihya.signed_delivery.v1"] = "dihya.signed_delivery.v1"
    job: DeliveryJob
    body: str = Field(description="The exact UTF-8 JSON body the signatures cover.")
    headers: dict[str, str]
    signed_at: AwareDatetime
    sealed_headers: str | None = Field(
        default=None,
        description="The endpoint's custom headers, sealed (Fernet under DIHYA_HEADERS_KEY, "
        "bound to the delivery id): only the deliverer opens them, just before the POST. "
        "Null when the endpoint has none.")


class SignRefusal(Contract):
    """The signer's answer to a sign-now request it cannot sign (signer → deliverer, over
    direct reply-to): the deliverer dead-letters the delivery with this reason."""

    type: Literal["dihya.sign_refusal.v1"] = "dihya.sign_refusal.v1"
    reason: Literal["no_secret", "unsignable"]
    error: str = Field(max_length=2000, description="Why, safe to show (never a secret).")


FactKind = Literal[
    "event.accepted",
    "event.rejected",
    "delivery.started",
    "delivery.attempted",
    "delivery.dead_lettered",
    "delivery.parked",
    "delivery.held",
    "delivery.retry_requested",
    "endpoint.created",
    "endpoint.updated",
    "endpoint.deleted",
    "endpoint.disabled",
    "endpoint.enabled",
    "secret.set",
    "token.created",
    "token.revoked",
    "access.refused",
    "tenant.created",
    "tenant.updated",
    "tenant.deleted",
]


class AuditFact(Contract):
    """Something that happened, for the audit log (every service → audit).

    Never carries a secret or a token: ``actor`` is a token *id*.
    """

    type: Literal["dihya.audit_fact.v1"] = "dihya.audit_fact.v1"
    id: str = Field(description="`fct_…`: unique; the audit store drops a redelivered duplicate.")
    kind: FactKind
    occurred_at: AwareDatetime
    service: ServiceName
    actor: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    endpoint_id: str | None = None
    delivery_id: str | None = None
    attempt: int | None = None
    url: str | None = None
    outcome: str | None = None
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    reason: str | None = None
    tenant: str | None = Field(
        default=None, description="`ten_…`: the tenant the fact is about (null: platform-wide "
        "or older producers); auditors filter by it.")
    details: dict[str, JsonValue] = Field(default_factory=dict)


MAX_FACTS_PER_BATCH = 1000
MAX_JOBS_PER_BATCH = 20
"""Jobs in one :class:`DeliveryJobBatch`. A signer holds up to this many times its prefetch
(``DIHYA_SIGNER_PREFETCH``, 200) jobs at once when a backlog of batches waits: measured, 4,000
jobs in flight took 75 MiB more, 20,000 (batches of 100) 300 MiB. At saturation on the bench a
batch holds a few jobs, what arrives in one confirm round trip, so the cap costs nothing there
and 20 already spreads a message's cost over 20 deliveries."""


class DeliveryJobBatch(Contract):
    """Several delivery jobs in one message (ingest → signer).

    Why: one persistent, confirmed quorum-queue message per job cost RabbitMQ, ingest's
    publish and the signer's consume and ack more than signing the job. Ingest publishes the
    jobs that pile up while its previous batch awaits its confirm — several events' fan-outs —
    as one message; at low load a batch is one job and leaves as a plain :class:`DeliveryJob`.
    The signer signs and forwards each job on its own and acks the batch once every one is
    confirmed (or parked, on its own, with its reason): a crash in between redelivers the
    batch, and its jobs keep their delivery ids. Retries come back to the signer one job each.
    """

    type: Literal["dihya.delivery_job_batch.v1"] = "dihya.delivery_job_batch.v1"
    jobs: list[DeliveryJob] = Field(min_length=1, max_length=MAX_JOBS_PER_BATCH)


class AuditFactBatch(Contract):
    """Several audit facts of one kind in one message (every service → audit).

    Why: a delivery produces facts at the rate of deliveries, and one persistent, confirmed
    message per fact (consumed by audit, and ``delivery.attempted`` by ingest's health queue
    too) cost more broker work than the delivery itself. Services publish the facts that pile
    up while the previous batch awaits its confirm as one message, routed by their common kind;
    consumers take :class:`AuditFact` and :class:`AuditFactBatch` alike.
    """

    type: Literal["dihya.audit_fact_batch.v1"] = "dihya.audit_fact_batch.v1"
    facts: list[AuditFact] = Field(min_length=1, max_length=MAX_FACTS_PER_BATCH)


class EndpointSecret(Contract):
    """Hands an endpoint's signing secret to the signer (ingest → signer).

    The only message that may carry a secret. ``SecretStr`` keeps it out of ``repr`` and logs;
    the JSON encoding reveals it, because the signer must receive it.
    """

    type: Literal["dihya.endpoint_secret.v1"] = "dihya.endpoint_secret.v1"
    endpoint_id: str
    action: Literal["set", "delete", "headers"]
    secret: SecretStr | None = None
    headers: dict[str, SecretStr] | None = Field(
        default=None,
        description="`headers`: the endpoint's custom headers, replacing the previous ones "
        "(empty: none), versioned apart from the secret by `issued_at`. `set` may carry them "
        "too (an endpoint created with headers).")
    previous_valid_until: AwareDatetime | None = Field(
        default=None,
        description="On rotation: the secret it replaces keeps signing until then (overlap).",
    )
    issued_at: AwareDatetime

    @field_serializer("secret", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return None if value is None else value.get_secret_value()

    @field_serializer("headers", when_used="json")
    def _reveal_headers(self, value: dict[str, SecretStr] | None) -> dict[str, str] | None:
        return None if value is None else {k: v.get_secret_value() for k, v in value.items()}


class TokenGrant(Contract):
    """Publishes an API token's hash and role so every HTTP service can authenticate it.

    Only the SHA-256 of the token travels; the token itself is shown once, to its creator.
    """

    type: Literal["dihya.token_grant.v1"] = "dihya.token_grant.v1"
    token_id: str
    role: Role
    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    revoked: bool = False
    issued_at: AwareDatetime
    tenant: str | None = Field(
        default=None, description="`ten_…` of a tenant-scoped token (roles `tenant_admin`, "
        "`tenant_viewer`); null for platform roles.")


Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class HeadCheckpoint(Contract):
    """The retention checkpoint a head attests: the chain may start right after it."""

    last_seq: int = Field(ge=1, description="The last record the purge deleted.")
    last_hash: Sha256Hex = Field(description="Its hash: the next record's `prev_hash`.")


class AuditHead(Contract):
    """A signed head of the audit chain (audit → auditors, SIEMs; ``dihya.audit.heads``).

    The message body is the head's canonical JSON (keys sorted, no whitespace); the signature
    is Ed25519 over the canonical JSON of every field but ``signature``. The same line is
    appended to the heads file. Format and a verification recipe: the audit service's README.
    """

    type: Literal["dihya.audit.head.v1"] = "dihya.audit.head.v1"
    seq: int = Field(ge=0, description="The newest record of the chain when signed.")
    head_hash: Sha256Hex = Field(description="That record's hash (64 zeros for an empty log).")
    records: int = Field(ge=0, description="Records of the chain from its start to `seq`: "
                                           "`seq` minus the checkpoint's `last_seq`.")
    time: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
                      description="When it was signed (UTC, the records' fixed spelling). Every "
                                  "record beyond `seq` was recorded later.")
    previous_head_hash: Sha256Hex = Field(
        description="sha256 of the canonical JSON of the previous head, signature included "
                    "(64 zeros for the first): heads form a chain of their own.")
    checkpoint: HeadCheckpoint | None = None
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$",
                        description="First 16 hex digits of sha256(raw Ed25519 public key).")
    signature: str = Field(pattern=r"^[A-Za-z0-9+/]{86}==$",
                           description="Ed25519 signature, base64 (standard, padded).")


class SubjectErasure(Contract):
    """Asks every service keeping personal data of a data subject to erase it (audit → ingest,
    on the control exchange, routing key ``subject.erase``).

    The audit service publishes it once it has crypto-shredded the subject's records (GDPR
    Art. 17); ingest then removes the subject's payloads from its message log. It names the
    subject in clear — the only way another service can find its data — so no service stores
    or logs it: the audit service does not consume it (its control queue takes ``token.#``).
    Idempotent: erasing twice removes nothing more.
    """

    type: Literal["dihya.subject_erasure.v1"] = "dihya.subject_erasure.v1"
    subject: str = Field(min_length=1, max_length=512,
                         description="The data subject's id (an event's `data.user_id`).")
    requested_by: str | None = Field(default=None, description="Token id of who asked.")
    requested_at: AwareDatetime


class CatchUpRequest(Contract):
    """Asks the deliverers to send one endpoint's waiting retries now (deliverer → deliverer,
    routing key ``catch-up`` on the work exchange, queue ``dihya.deliverer.catch-up`` with one
    active consumer). A deliverer publishes it when a retry to the endpoint succeeded on its
    schedule: the endpoint was failing and is back. The active deliverer sweeps the retry
    tiers (docs/operations.md, "Catch-up"); a request older than the last sweep of its endpoint
    is dropped, so repeats cost nothing. Losing one delays nothing beyond the schedule."""

    type: Literal["dihya.catch_up_request.v1"] = "dihya.catch_up_request.v1"
    endpoint_id: str = Field(min_length=1, max_length=128)
    requested_at: AwareDatetime
    retry_schedule_ms: tuple[Annotated[int, Field(gt=0)], ...] | None = Field(
        default=None,
        description="The endpoint's own retry schedule (its tiers are swept too); null: the "
        "deployment's.")


CONTRACTS: tuple[type[Contract], ...] = (
    Event,
    AttemptRecord,
    DeliveryJob,
    DeliveryJobBatch,
    SignedDelivery,
    SignRefusal,
    AuditFact,
    AuditFactBatch,
    EndpointSecret,
    TokenGrant,
    AuditHead,
    SubjectErasure,
    CatchUpRequest,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def encode(model: Contract) -> bytes:
    """Serialise a contract for the wire: compact JSON, fields that are ``None`` left out.

    Left out because every contract refuses unknown fields (``extra="forbid"``): a field added
    in a later release and sent as ``null`` would make a reader of the release before refuse
    (and park) every message during a rolling upgrade. Left out, a message that uses no newer
    feature is exactly what the older reader accepts; it reads back the same (every nullable
    field defaults to ``None``; ``tests/contracts`` checks both). Only model fields are
    concerned: ``null`` inside an event's ``data`` stays.

    pydantic's own serialiser straight to JSON: the same bytes as ``orjson.dumps`` of
    ``model_dump(mode="json", exclude_none=True)``, in a third of the time (no Python dict in
    between)."""
    return model.model_dump_json(exclude_none=True).encode()


def decode_facts(body: bytes) -> list[AuditFact]:
    """The facts of a message on the audit exchange, an :class:`AuditFactBatch` or a single
    :class:`AuditFact` (told apart by their ``type``). Raises ``ValueError`` (pydantic's
    ``ValidationError`` included) for anything else."""
    return _one_or_batch(body, AuditFact, AuditFactBatch, "facts")


def decode_jobs(body: bytes) -> list[DeliveryJob]:
    """The jobs of a message on ``dihya.signer.jobs``, a :class:`DeliveryJobBatch` or a single
    :class:`DeliveryJob` (told apart by their ``type``). Raises ``ValueError`` (pydantic's
    ``ValidationError`` included) for anything else."""
    return _one_or_batch(body, DeliveryJob, DeliveryJobBatch, "jobs")


def _one_or_batch(body: bytes, one: type[ContractT], batch: type[Contract], items: str
                  ) -> list[ContractT]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if isinstance(data, dict) and data.get("type") == batch.model_fields["type"].default:
        return list(getattr(batch.model_validate(data), items))
    return [one.model_validate(data)]


def schema_of(model: type[Contract]) -> dict[str, Any]:
    """The JSON Schema committed for ``model`` (validation mode: what a consumer accepts)."""
    return model.model_json_schema(mode="validation")
