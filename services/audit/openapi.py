"""OpenAPI 3.1 description of the audit HTTP API, built from the same constants the code uses
(parameter names, fact kinds, record fields, page limit), so the document cannot drift from
the parser; ``tests/unit/test_audit_openapi.py`` checks they agree."""

from __future__ import annotations

from typing import Any

from services.audit import handlers


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_DT = {"type": "string", "format": "date-time",
       "description": "UTC, fixed width: `2025-05-20T12:00:00.000000Z`."}
_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

RECORD_PROPERTIES: dict[str, dict[str, Any]] = {
    "seq": {"type": "integer", "minimum": 1,
            "description": "Position in the chain (1, 2, 3… without gaps): the stable order."},
    "id": {"type": "string", "description": "The fact id (`fct_…`); unique."},
    "kind": {"type": "string", "enum": list(handlers.FACT_KINDS)},
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
    "subject": _nullable("string", description="`details.subject` when it is a string: the "
                                                "data subject (GDPR export key)."),
    "details": {"type": "object", "additionalProperties": True},
    "prev_hash": {**_HASH, "description": "`hash` of the record before (64 zeros for seq 1)."},
    "hash": {**_HASH, "description": "sha256 hex of `prev_hash` (ASCII) followed by the "
                                     "canonical JSON of this record without `prev_hash` and "
                                     "`hash`: sorted keys, no whitespace."},
}

_FILTER_DESCRIPTIONS = {
    "event_id": "Only records of this event id.",
    "endpoint_id": "Only records of this endpoint id.",
    "delivery_id": "Only records of this delivery id.",
    "kind": "Only records of this fact kind.",
    "outcome": "Only records with this outcome (e.g. `delivered`, `failed`).",
    "subject": "Only records about this data subject (GDPR access/export).",
}


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document(page_limit: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a service whose largest page is ``page_limit``."""
    record_params = [
        *(
            _param(name,
                   {"type": "string", "enum": list(handlers.FACT_KINDS)} if name == "kind"
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
        _param("limit", {"type": "integer", "minimum": 1, "maximum": page_limit,
                         "default": min(handlers.DEFAULT_LIMIT, page_limit)},
               "Records per page."),
        _param("cursor", {"type": "string"},
               "`next_cursor` of the previous page. Send the same filters again with it."),
    ]
    auth_errors = {
        "401": _error_response("No token, or an unknown or revoked one."),
        "403": _error_response("The token's role may not read the audit log."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dihya audit API",
            "version": "1.0.0",
            "description": (
                "Query, export and verify the append-only, hash-chained audit log of Dihya "
                "Webhooks. Roles `auditor` and `admin` may read it. Unknown query parameters "
                "are refused (422) so that a misspelt filter never returns everything."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "AuditRecord": {
                    "type": "object",
                    "properties": RECORD_PROPERTIES,
                    "required": list(RECORD_PROPERTIES),
                    "additionalProperties": False,
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
                    },
                    "required": ["ok", "records", "first_bad_seq", "problem", "detail",
                                 "head_hash"],
                    "additionalProperties": False,
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
            "/v1/audit/verify": {
                "get": {
                    "operationId": "verifyAuditChain",
                    "summary": "Walk the hash chain and report the first bad record.",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "Verification report (ok or not).", "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/VerifyReport"}}}},
                        **auth_errors,
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
