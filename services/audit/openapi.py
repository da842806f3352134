"""OpenAPI 3.1 description of the audit HTTP API, built from the same constants the code uses
(parameter names, fact kinds, record fields, page limit), so the document cannot drift from
the parser; ``tests/unit/test_audit_openapi.py`` checks they agree."""

from __future__ import annotations

from typing import Any

from services.audit import exports, handlers, sealing


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_DT = {"type": "string", "format": "date-time",
       "description": "UTC, fixed width: `2025-05-20T12:00:00.000000Z`."}
_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
SUBJECT_PATH = "/v1/audit/subjects/{subject}"

RECORD_PROPERTIES: dict[str, dict[str, Any]] = {
    "seq": {"type": "integer", "minimum": 1,
            "description": "Position in the chain (1, 2, 3… without gaps): the stable order."},
    "id": {"type": "string", "description": "The fact id (`fct_…`); unique."},
    "kind": {"type": "string", "enum": list(handlers.RECORD_KINDS),
             "description": "A fact kind, or a kind of the audit service's own records: "
                            "`subject.erased` (a GDPR erasure) and `retention.purged`."},
    "occurred_at": {**_DT, "description": "When it happened, per the emitting service."},
    "recorded_at": {**_DT, "description": "When the audit store committed it."},
    "service": {"type": "string", "enum": ["ingest", "signer", "deliverer", "audit"]},
    "actor": _nullable("string", description="Token id of who acted (never a token)."),
    "event_id": _nullable("string"),
    "event_type": _nullable("string"),
    "endpoint_id": _nullable("string"),
    "delivery_id": _nullable("string"),
    "attempt": _nullable("integer"),
    "url": _nullable("string"),
    "outcome": _nullable("string"),
    "status_code": _nullable("integer"),
    "duration_ms": _nullable("number"),
    "error": _nullable("string"),
    "reason": _nullable("string"),
    "subject": _nullable("string", description=(
        "The data subject, in clear only on records stored before sealing existed; on a "
        "sealed record it is null and the subject id is in `personal.subject`.")),
    "details": {"type": "object", "additionalProperties": True,
                "description": "Free-form details; `{}` on a sealed record (see `personal`)."},
    "subject_ref": {"type": "string", "pattern": "^sbj_[0-9a-f]{32}$", "description": (
        "Only on a record about a data subject: the subject's random pseudonym. Hashed.")},
    "sealed": {"type": "string", "description": (
        "Only on a record about a data subject: `subject` and `details`, AES-256-GCM "
        "encrypted with the subject's own key (`v1.` + base64url(nonce ‖ ciphertext), the "
        "record id as associated data). Hashed, so erasing the key keeps the chain valid.")},
    "tenant": {"type": "string", "description": (
        "Only on a record of one tenant (#21): its `ten_…` id. Hashed when present.")},
    "personal": {"description": (
        "Only on a sealed record, and NOT hashed: `sealed` opened — `{subject, details}` — "
        "or each field `[erased]` once the subject was erased (`[unreadable]` if the "
        "ciphertext does not open)."),
        "type": "object",
        "properties": {name: {} for name in sealing.PERSONAL_FIELDS},
        "required": list(sealing.PERSONAL_FIELDS),
        "additionalProperties": False},
    "prev_hash": {**_HASH, "description": "`hash` of the record before (64 zeros for seq 1)."},
    "hash": {**_HASH, "description": "sha256 hex of `prev_hash` (ASCII) followed by the "
                                     "canonical JSON of this record without `prev_hash`, "
                                     "`hash` and `personal`: sorted keys, no whitespace."},
}
OPTIONAL_RECORD_FIELDS: tuple[str, ...] = (*handlers.SEALED_FIELDS, *handlers.VIEW_FIELDS)

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


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _filter_params() -> list[dict[str, Any]]:
    return [
        *(
            _param(name,
                   {"type": "string", "enum": list(handlers.RECORD_KINDS)} if name == "kind"
                   else {"type": "string", "minLength": 1,
                         "maxLength": handlers.MAX_FILTER_LENGTH},
                   _FILTER_DESCRIPTIONS[name])
            for name in handlers.FILTER_PARAMS
        ),
        _param("since", {"type": "string", "format": "date-time"},
               "Only records with `occurred_at` at or after this instant (ISO-8601; without "
               "an offset, UTC)."),
        _param("until", {"type": "string", "format": "date-time"},
               "Only records with `occurred_at` strictly before this instant."),
    ]


_SUBJECT_PARAM = {
    "name": "subject", "in": "path", "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": sealing.MAX_SUBJECT_LENGTH},
    "description": "The data subject's id, as found in the events (e.g. `data.user_id`); "
                   "percent-encode reserved characters.",
}

_CHECKPOINT = {
    "type": ["object", "null"],
    "description": (
        "The signed retention checkpoint the walk started from (null: from the genesis hash). "
        "`signature` is base64 Ed25519 over the canonical JSON (sorted keys, no whitespace) "
        "of `{at, count, key_id, last_hash, last_seq}`; `public_key` is base64 of the raw "
        "key it must verify with; `key_id` the first 16 hex digits of its sha256."),
    "properties": {
        "last_seq": {"type": "integer", "description": "Last purged record."},
        "last_hash": {**_HASH, "description": "Its hash: the first remaining record's "
                                              "`prev_hash`."},
        "count": {"type": "integer", "description": "Records this purge covered."},
        "at": _DT,
        "key_id": {"type": "string"},
        "signature": {"type": "string"},
        "signature_ok": {"type": "boolean"},
        "public_key": {"type": "string"},
    },
    "required": ["last_seq", "last_hash", "count", "at", "key_id", "signature",
                 "signature_ok", "public_key"],
}


_SIGNED_HEAD = {
    "type": "object",
    "description": (
        "A signed head of the chain (`dihya.audit.head.v1`; the services/audit README gives "
        "the format and a verification recipe)."),
    "properties": {
        "type": {"const": "dihya.audit.head.v1"},
        "seq": {"type": "integer", "minimum": 0},
        "head_hash": _HASH,
        "records": {"type": "integer", "minimum": 0},
        "time": {"type": "string"},
        "previous_head_hash": _HASH,
        "checkpoint": {"type": ["object", "null"], "properties": {
            "last_seq": {"type": "integer"}, "last_hash": _HASH},
            "required": ["last_seq", "last_hash"]},
        "key_id": {"type": "string"},
        "signature": {"type": "string"},
    },
    "required": ["type", "seq", "head_hash", "records", "time", "previous_head_hash",
                 "checkpoint", "key_id", "signature"],
}
_UNPUBLISHED = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                "description": "Signed heads each sink (`file`, `exchange`) has not taken yet."}


def document(page_limit: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a service whose largest page is ``page_limit``."""
    record_params = [
        *_filter_params(),
        _param("limit", {"type": "integer", "minimum": 1, "maximum": page_limit,
                         "default": min(handlers.DEFAULT_LIMIT, page_limit)},
               "Records per page."),
        _param("cursor", {"type": "string"},
               "`next_cursor` of the previous page. Send the same filters again with it."),
        _param("order", {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
               "`asc`: oldest first (chain order); `desc`: newest first. Send it again with "
               "the cursor."),
    ]
    auth_errors = {
        "401": _error_response("No token, or an unknown or revoked one."),
        "403": _error_response("The token's role may not read the audit log."),
    }
    admin_errors = {
        "401": _error_response("No token, or an unknown or revoked one."),
        "403": _error_response("Only the `admin` role may do this (it cannot be undone)."),
    }
    export_params = [
        *_filter_params(),
        _param("format", {"type": "string", "enum": list(exports.FORMATS), "default": "jsonl"},
               "`jsonl`: one record per line, exactly as `/records` returns it (re-verifiable). "
               "`csv`: one column per field, `details`/`personal` as JSON, null as an empty "
               "cell, text starting with `= + - @` prefixed with `'` (spreadsheet formula "
               "guard)."),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dihya audit API",
            "version": "1.0.0",
            "description": (
                "Query, export and verify the append-only, hash-chained audit log of Dihya "
                "Webhooks. Roles `auditor` and `admin` may read and export it; only `admin` may "
                "erase a data subject or run a retention purge. Unknown query parameters "
                "are refused (422) so that a misspelt filter never returns everything."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "AuditRecord": {
                    "type": "object",
                    "properties": RECORD_PROPERTIES,
                    "required": [n for n in RECORD_PROPERTIES
                                 if n not in OPTIONAL_RECORD_FIELDS],
                    "additionalProperties": False,
                },
                "SubjectExport": {
                    "type": "object",
                    "description": "GDPR Art. 15 / 20: what the log holds about one subject.",
                    "properties": {
                        "type": {"const": exports.SUBJECT_EXPORT_TYPE},
                        "subject": {"type": "string"},
                        "generated_at": _DT,
                        "records": {"type": "array", "description": (
                            "Every record about the subject (its sealed records, opened), "
                            "oldest first."),
                                    "items": {"$ref": "#/components/schemas/AuditRecord"}},
                        "events": {"type": "array", "description": (
                            "Per event: its type (the purpose), when, and each delivery to "
                            "a recipient."), "items": {
                            "type": "object",
                            "properties": {
                                "event_id": {"type": "string"},
                                "event_type": _nullable("string"),
                                "first_recorded_at": _DT,
                                "deliveries": {"type": "array", "items": {"type": "object"}},
                            },
                            "required": ["event_id", "event_type", "first_recorded_at",
                                         "deliveries"],
                        }},
                        "recipients": {"type": "array", "items": {"type": "string"},
                                       "description": "Endpoint URLs the subject's events "
                                                      "were delivered to."},
                    },
                    "required": ["type", "subject", "generated_at", "records", "events",
                                 "recipients"],
                },
                "Erasure": {
                    "type": "object",
                    "properties": {
                        "subject_ref": _nullable("string", description=(
                            "The erased pseudonym; null if no sealed record was about the "
                            "subject.")),
                        "records": {"type": "integer", "description": (
                            "Sealed records whose personal fields are now unreadable.")},
                        "legacy_records": {"type": "integer", "description": (
                            "Records stored before sealing existed that name the subject in "
                            "clear: erasure cannot reach them.")},
                        "record_seq": {"type": "integer", "description": (
                            "Seq of the `subject.erased` record auditing this erasure.")},
                        "erased_at": _DT,
                    },
                    "required": ["subject_ref", "records", "legacy_records", "record_seq",
                                 "erased_at"],
                    "additionalProperties": False,
                },
                "Purge": {
                    "type": "object",
                    "properties": {
                        "deleted": {"type": "integer"},
                        "keys_deleted": {"type": "integer", "description": (
                            "Subject keys dropped because no remaining record needs them.")},
                        "cutoff": {**_DT, "description": "Records recorded before this were "
                                                         "purged (the oldest prefix)."},
                        "checkpoint": {**_CHECKPOINT, "description": "The checkpoint written "
                                       "(null when nothing new was old enough)."},
                    },
                    "required": ["deleted", "keys_deleted", "cutoff", "checkpoint"],
                },
                "RecordsPage": {
                    "type": "object",
                    "properties": {
                        "records": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/AuditRecord"}},
                        "next_cursor": _nullable(
                            "string", description="Pass as `cursor` for the next page; null "
                                                  "on the last page."),
                    },
                    "required": ["records", "next_cursor"],
                    "additionalProperties": False,
                },
                "VerifyReport": {
                    "type": "object",
                    "properties": {
                        "ok": {"type": "boolean"},
                        "records": {"type": "integer", "minimum": 0,
                                    "description": "Records walked."},
                        "first_bad_seq": _nullable("integer"),
                        "problem": {"type": ["string", "null"],
                                    "enum": [*handlers.PROBLEMS, None]},
                        "detail": _nullable("string", description="What `problem` means."),
                        "head_hash": {**_HASH, "description": (
                            "Hash of the newest record. Deleting the newest records leaves a "
                            "valid shorter chain: compare with a head noted earlier.")},
                        "checkpoint": _CHECKPOINT,
                        "heads": {"type": "object", "description": (
                            "The head signing key (raw Ed25519 public key, base64) and the "
                            "heads not yet published."), "properties": {
                                "key_id": {"type": "string"}, "public_key": {"type": "string"},
                                "unpublished": _UNPUBLISHED},
                            "required": ["key_id", "public_key", "unpublished"]},
                        "signed_head": {
                            "type": ["object", "null"],
                            "description": "The newest head this service signed (null: none "
                                           "yet), and whether the database still holds its "
                                           "hash at its seq (if not, `ok` is false).",
                            "properties": {"seq": {"type": "integer"}, "head_hash": _HASH,
                                           "time": {"type": "string"},
                                           "matches": {"type": "boolean"}},
                            "required": ["seq", "head_hash", "time", "matches"]},
                    },
                    "required": ["ok", "records", "first_bad_seq", "problem", "detail",
                                 "head_hash", "checkpoint", "signed_head"],
                    "additionalProperties": False,
                },
                "SignedHead": {
                    "type": "object",
                    "properties": {"head": _SIGNED_HEAD, "unpublished": _UNPUBLISHED},
                    "required": ["head", "unpublished"],
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "fields": {"type": "array", "items": {
                                    "type": "object",
                                    "properties": {"field": {"type": "string"},
                                                   "message": {"type": "string"}},
                                    "required": ["field", "message"],
                                }},
                            },
                            "required": ["code", "message", "fields"],
                        }
                    },
                    "required": ["error"],
                },
            },
        },
        "paths": {
            "/v1/audit/records": {
                "get": {
                    "operationId": "listAuditRecords",
                    "summary": "Records matching every given filter, oldest first (by seq).",
                    "security": [{"bearer": []}],
                    "parameters": record_params,
                    "responses": {
                        "200": {"description": "A page of records.", "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RecordsPage"}}}},
                        **auth_errors,
                        "422": _error_response("A parameter is invalid; `fields` names it."),
                    },
                }
            },
            "/v1/audit/export": {
                "get": {
                    "operationId": "exportAuditRecords",
                    "summary": "Every record matching the filters, streamed (chunked), oldest "
                               "first; the log as of the request (newer records left out).",
                    "description": (
                        "Memory stays flat whatever the size: records are read a page at a "
                        "time. If the export fails midway the connection is aborted, so a "
                        "truncated transfer is never mistaken for a complete file. "
                        "`X-Dihya-Audit-Head-Seq` gives the head seq at the start."),
                    "security": [{"bearer": []}],
                    "parameters": export_params,
                    "responses": {
                        "200": {"description": "The records.", "content": {
                            "application/x-ndjson": {"schema": {
                                "$ref": "#/components/schemas/AuditRecord"}},
                            "text/csv": {"schema": {"type": "string"}}}},
                        **auth_errors,
                        "422": _error_response("A parameter is invalid; `fields` names it."),
                    },
                }
            },
            SUBJECT_PATH + "/export": {
                "get": {
                    "operationId": "exportSubject",
                    "summary": "GDPR Art. 15 / 20: every record about a data subject, as one "
                               "machine-readable JSON document (streamed).",
                    "description": (
                        "After an erasure it holds nothing personal: the subject can no "
                        "longer be found (its blind-index row is gone)."),
                    "security": [{"bearer": []}],
                    "parameters": [_SUBJECT_PARAM],
                    "responses": {
                        "200": {"description": "The subject export.", "content": {
                            "application/json": {"schema": {
                                "$ref": "#/components/schemas/SubjectExport"}}}},
                        **auth_errors,
                        "422": _error_response("The subject id is invalid."),
                    },
                }
            },
            SUBJECT_PATH + "/erasure": {
                "post": {
                    "operationId": "eraseSubject",
                    "summary": "GDPR Art. 17: make the subject's personal data unreadable "
                               "everywhere in the log (crypto-shredding; admin only).",
                    "description": (
                        "Deletes the subject's key and blind-index row; records are not "
                        "touched, so `/verify` still says ok, and `/records` shows their "
                        "`personal` fields as `[erased]`. The erasure itself is recorded "
                        "(kind `subject.erased`, with the pseudonym, never the id). "
                        "Idempotent: erasing again, or an unknown subject, erases nothing "
                        "and is recorded too. Then the other services are told "
                        "(`subject.erase` on the control exchange): ingest removes the "
                        "subject's payloads from its message log."),
                    "security": [{"bearer": []}],
                    "parameters": [_SUBJECT_PARAM],
                    "responses": {
                        "200": {"description": "What was erased.", "content": {
                            "application/json": {"schema": {
                                "$ref": "#/components/schemas/Erasure"}}}},
                        **admin_errors,
                        "422": _error_response("The subject id is invalid."),
                        "503": _error_response("Erased here, but the other services could "
                                               "not be told: erase again."),
                    },
                }
            },
            "/v1/audit/retention/purge": {
                "post": {
                    "operationId": "purgeAuditRecords",
                    "summary": "Retention: delete the records older than "
                               "DIHYA_AUDIT_RETENTION_DAYS behind a signed checkpoint "
                               "(admin only; it also runs periodically).",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "What was purged.", "content": {
                            "application/json": {"schema": {
                                "$ref": "#/components/schemas/Purge"}}}},
                        **admin_errors,
                        "409": _error_response("Retention is off (0 days): nothing is ever "
                                               "purged."),
                    },
                }
            },
            "/v1/audit/verify": {
                "get": {
                    "operationId": "verifyAuditChain",
                    "summary": "Walk the hash chain (from the retention checkpoint, if any, "
                               "whose signature is checked too) and report the first bad "
                               "record.",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "Verification report (ok or not).", "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/VerifyReport"}}}},
                        **auth_errors,
                    },
                }
            },
            "/v1/audit/heads": {
                "post": {
                    "operationId": "signAuditHead",
                    "summary": "Sign the chain's head now and publish it to the heads file "
                               "and the `dihya.audit.heads` exchange (it also happens every "
                               "DIHYA_AUDIT_HEADS_INTERVAL seconds).",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "The head signed.", "content": {
                            "application/json": {"schema": {
                                "$ref": "#/components/schemas/SignedHead"}}}},
                        **auth_errors,
                        "409": _error_response("This service signs no heads."),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document.",
                        "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                              "content": {"application/json": {}}}}}
            },
            "/healthz": {
                "get": {"operationId": "healthz", "summary": "The process is alive.",
                        "responses": {"200": {"description": "Alive."}}}
            },
            "/readyz": {
                "get": {"operationId": "readyz",
                        "summary": "Broker connected and storage reachable.",
                        "responses": {"200": {"description": "Ready."},
                                      "503": {"description": "A dependency is unreachable."}}}
            },
            "/metrics": {
                "get": {"operationId": "metrics", "summary": "Prometheus metrics.",
                        "responses": {"200": {"description": "Prometheus text format.",
                                              "content": {"text/plain": {}}}}}
            },
        },
    }
