"""What the audit HTTP API takes and answers, as pydantic models: the OpenAPI document
(:mod:`.openapi`) is generated from them and the route table (:data:`.http.routes`).

The handlers build their answers from the chain's own records (:func:`.decisions.to_json`,
the store's ``as_json``), so these models describe those answers: the tests validate real
answers against the generated schemas, and check that the query models name exactly the
parameters the parsers accept (:data:`.decisions.QUERY_PARAMS`, :data:`.exports.EXPORT_PARAMS`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from services.audit import decisions, exports
from services.audit.decisions import sealing
from shared.contracts import AuditHead, ServiceName

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Order = Literal["asc", "desc"]
"""``order`` of ``GET /v1/audit/records`` (checked by :func:`.decisions.parse_query`)."""
UtcTime = Annotated[datetime, Field(
    description="UTC, fixed width: `2025-05-20T12:00:00.000000Z`.")]


def _no_null_default(schema: dict[str, Any]) -> None:
    """A field that may be absent has no default in the document: drop ``"default": null``."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class Answer(BaseModel):
    """An answer of the API: exactly these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_no_null_default)


# -- records ----------------------------------------------------------------------------------

class Personal(Answer):
    """Only on a sealed record, and NOT hashed: `sealed` opened — `{subject, details}` — or
    each field `[erased]` once the subject was erased (`[unreadable]` if the ciphertext does
    not open)."""

    subject: Any
    details: Any


class AuditRecord(Answer):
    """One record of the chain."""

    seq: int = Field(ge=1, description="Position in the chain (1, 2, 3… without gaps): the "
                                       "stable order.")
    id: str = Field(description="The fact id (`fct_…`); unique.")
    kind: str = Field(description="A fact kind, or a kind of the audit service's own "
                                  "records: `subject.erased` (a GDPR erasure) and "
                                  "`retention.purged`.",
                      json_schema_extra={"enum": list(decisions.RECORD_KINDS)})
    occurred_at: datetime = Field(description="When it happened, per the emitting service.")
    recorded_at: datetime = Field(description="When the audit store committed it.")
    service: ServiceName
    actor: str | None = Field(description="Token id of who acted (never a token).")
    event_id: str | None
    event_type: str | None
    endpoint_id: str | None
    delivery_id: str | None
    attempt: int | None
    url: str | None
    outcome: str | None
    status_code: int | None
    duration_ms: float | None
    error: str | None
    reason: str | None
    subject: str | None = Field(description=(
        "The data subject, in clear only on records stored before sealing existed; on a "
        "sealed record it is null and the subject id is in `personal.subject`."))
    details: dict[str, Any] = Field(description="Free-form details; `{}` on a sealed record "
                                                "(see `personal`).")
    subject_ref: str | SkipJsonSchema[None] = Field(
        default=None, pattern=r"^sbj_[0-9a-f]{32}$", description=(
        "Only on a record about a data subject: the subject's random pseudonym. Hashed."))
    sealed: str | SkipJsonSchema[None] = Field(default=None, description=(
        "Only on a record about a data subject: `subject` and `details`, AES-256-GCM "
        "encrypted with the subject's own key (`v1.` + base64url(nonce ‖ ciphertext), the "
        "record id as associated data). Hashed, so erasing the key keeps the chain valid."))
    tenant: str | SkipJsonSchema[None] = Field(default=None, description=(
        "Only on a record of one tenant: its `ten_…` id. Hashed when present."))
    personal: Personal | SkipJsonSchema[None] = Field(default=None)
    prev_hash: Sha256Hex = Field(description="`hash` of the record before (64 zeros for "
                                             "seq 1).")
    hash: Sha256Hex = Field(description="sha256 hex of `prev_hash` (ASCII) followed by the "
                                        "canonical JSON of this record without `prev_hash`, "
                                        "`hash` and `personal`: sorted keys, no whitespace.")


class RecordsPage(Answer):
    """A page of records."""

    records: list[AuditRecord]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on "
                                                "the last page.")


# -- verification, checkpoints, heads -------------------------------------------------------

class Checkpoint(Answer):
    """The signed retention checkpoint the walk started from (null: from the genesis hash).
    `signature` is base64 Ed25519 over the canonical JSON (sorted keys, no whitespace) of
    `{at, count, key_id, last_hash, last_seq}`; `public_key` is base64 of the raw key it must
    verify with; `key_id` the first 16 hex digits of its sha256."""

    last_seq: int = Field(description="Last purged record.")
    last_hash: Sha256Hex = Field(description="Its hash: the first remaining record's "
                                             "`prev_hash`.")
    count: int = Field(description="Records this purge covered.")
    at: UtcTime
    key_id: str
    signature: str
    signature_ok: bool
    public_key: str


Unpublished = Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(
    description="Signed heads each sink (`file`, `exchange`) has not taken yet.")]


class HeadsKey(Answer):
    """The head signing key (raw Ed25519 public key, base64) and the heads not yet
    published."""

    key_id: str
    public_key: str
    unpublished: Unpublished


class SignedHeadCheck(Answer):
    """The newest head this service signed, and whether the database still holds its hash at
    its seq (if not, `ok` is false)."""

    seq: int
    head_hash: Sha256Hex
    time: str
    matches: bool


class VerifyReport(Answer):
    """Verification report (ok or not)."""

    ok: bool
    records: int = Field(ge=0, description="Records walked.")
    first_bad_seq: int | None
    problem: str | None = Field(json_schema_extra={"enum": [*decisions.PROBLEMS, None]})
    detail: str | None = Field(description="What `problem` means.")
    head_hash: Sha256Hex = Field(description=(
        "Hash of the newest record. Deleting the newest records leaves a valid shorter "
        "chain: compare with a head noted earlier."))
    checkpoint: Checkpoint | None
    heads: HeadsKey | SkipJsonSchema[None] = Field(
        default=None, description="Present when this service signs heads.")
    signed_head: SignedHeadCheck | None = Field(description="Null: no head signed yet.")


class SignedHead(Answer):
    """The head signed."""

    head: AuditHead
    unpublished: Unpublished


# -- erasure, retention, subject export -------------------------------------------------------

class Erasure(Answer):
    """What was erased."""

    subject_ref: str | None = Field(description="The erased pseudonym; null if no sealed "
                                                "record was about the subject.")
    records: int = Field(description="Sealed records whose personal fields are now "
                                     "unreadable.")
    legacy_records: int = Field(description="Records stored before sealing existed that name "
                                            "the subject in clear: erasure cannot reach them.")
    record_seq: int = Field(description="Seq of the `subject.erased` record auditing this "
                                        "erasure.")
    erased_at: UtcTime


class Purge(Answer):
    """What was purged."""

    deleted: int
    keys_deleted: int = Field(description="Subject keys dropped because no remaining record "
                                          "needs them.")
    cutoff: datetime = Field(description="Records recorded before this were purged (the "
                                         "oldest prefix).")
    checkpoint: Checkpoint | None = Field(description="The checkpoint written (null when "
                                                      "nothing new was old enough).")


class SubjectEvent(Answer):
    """Per event: its type (the purpose), when, and each delivery to a recipient."""

    event_id: str
    event_type: str | None
    first_recorded_at: UtcTime
    deliveries: list[dict[str, Any]]


class SubjectExport(Answer):
    """GDPR Art. 15 / 20: what the log holds about one subject."""

    type: str = Field(json_schema_extra={"const": exports.SUBJECT_EXPORT_TYPE})
    subject: str
    generated_at: UtcTime
    records: list[AuditRecord] = Field(description="Every record about the subject (its "
                                                   "sealed records, opened), oldest first.")
    events: list[SubjectEvent]
    recipients: list[str] = Field(description="Endpoint URLs the subject's events were "
                                              "delivered to.")


class FieldError(Answer):
    field: str
    message: str


class ErrorDetail(Answer):
    code: str
    message: str
    fields: list[FieldError]


class Error(Answer):
    """The body of every error."""

    error: ErrorDetail


# -- parameters -------------------------------------------------------------------------------

_PARAMS = ConfigDict(json_schema_extra=_no_null_default)

_FILTER_DESCRIPTIONS = {
    "event_id": "Only records of this event id.",
    "event_type": "Only records of this event type (e.g. `template.created`).",
    "endpoint_id": "Only records of this endpoint id.",
    "delivery_id": "Only records of this delivery id.",
    "kind": "Only records of this kind.",
    "outcome": "Only records with this outcome (e.g. `delivered`, `failed`).",
    "subject": "Only records about this data subject (its id, e.g. the event's `user_id`): "
               "found through a keyed blind index, never stored in clear.",
    "tenant": "Only records of this tenant (its `ten_…` id).",
}


def _filters() -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: (str, Field(default=None, description=_FILTER_DESCRIPTIONS[name],
                          json_schema_extra={"enum": list(decisions.RECORD_KINDS)}))
        if name == "kind" else
        (str, Field(default=None, min_length=1, max_length=decisions.MAX_FILTER_LENGTH,
                    description=_FILTER_DESCRIPTIONS[name]))
        for name in decisions.FILTER_PARAMS
    }
    fields["since"] = (datetime, Field(
        default=None, description="Only records with `occurred_at` at or after this instant "
                                  "(ISO-8601; without an offset, UTC)."))
    fields["until"] = (datetime, Field(
        default=None, description="Only records with `occurred_at` strictly before this "
                                  "instant."))
    return fields


def records_query(page_limit: int) -> type[BaseModel]:
    """The parameters of ``GET /v1/audit/records`` for a service whose largest page is
    ``page_limit``."""
    return create_model(
        "RecordsQuery", __config__=_PARAMS, **_filters(),
        limit=(int, Field(default=min(decisions.DEFAULT_LIMIT, page_limit), ge=1,
                          le=page_limit, description="Records per page.")),
        cursor=(str, Field(default=None, description=(
            "`next_cursor` of the previous page. Send the same filters again with it."))),
        order=(Order, Field(default="asc", description=(
            "`asc`: oldest first (chain order); `desc`: newest first. Send it again with the "
            "cursor."))),
    )


ExportQuery: type[BaseModel] = create_model(
    "ExportQuery", __config__=_PARAMS, **_filters(),
    format=(exports.Format, Field(
        default="jsonl", description=(
            "`jsonl`: one record per line, exactly as `/records` returns it (re-verifiable). "
            "`csv`: one column per field, `details`/`personal` as JSON, null as an empty cell, "
            "text starting with `= + - @` prefixed with `'` (spreadsheet formula guard)."))),
)
"""The parameters of ``GET /v1/audit/export``."""


class SubjectPath(BaseModel):
    subject: str = Field(min_length=1, max_length=sealing.MAX_SUBJECT_LENGTH, description=(
        "The data subject's id, as found in the events (e.g. `data.user_id`); "
        "percent-encode reserved characters."))
