"""The OpenAPI 3.1 document of the ingest API, generated from the route table.

Schemas are the pydantic models the handlers validate with (``model_json_schema``; OpenAPI 3.1
uses JSON Schema 2020-12, which is what pydantic emits), so the document states exactly what
the API accepts and returns. ``tests/integration/test_ingest_api.py`` checks that every served
route is documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.ingest.models import ErrorBody
from shared.contracts import Role

Method = Literal["GET", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Route:
    """One operation: how it is routed and how the OpenAPI document describes it."""

    method: Method
    path: str
    handler: str
    summary: str
    roles: tuple[Role, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


_ERRORS = {
    400: "The body breaks the JSON rule; `code` says how: `invalid_json` (not JSON, or nested "
         "deeper than 200 levels), `non_finite_number` (NaN, Infinity or a number beyond a "
         "double's range), `duplicate_key` (a key twice in one object).",
    401: "No token, or an unknown or revoked one.",
    403: "The token's role may not do this.",
    404: "No such resource.",
    409: "The resource's state forbids it (the endpoint is deleted or disabled, the delivery "
         "already resent); `message` says which.",
    413: "The body exceeds DIHYA_INGEST_MAX_BODY_BYTES.",
    415: "The body is not application/json.",
    422: "The body (or a parameter) is not valid; `fields` names each problem.",
    429: "Too many requests (`tenant_rate_limited`: the tenant's events per second); retry "
         "after the `Retry-After` seconds.",
    503: "The broker or the database is unavailable; nothing was changed. Retry. Except "
         "`broker_unconfirmed` (publishing an event): the event may or may not have been "
         "accepted; retry with the same Idempotency-Key, or with `error.event_id` as the "
         "body's `id`, and it is delivered once.",
}

_OPS: dict[str, Any] = {
    "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive.",
                         "security": [], "responses": {"200": {"description": "Alive."}}}},
    "/readyz": {"get": {"operationId": "readyz",
                        "summary": "The broker is connected and the database reachable.",
                        "security": [],
                        "responses": {"200": {"description": "Ready."},
                                      "503": {"description": "Not ready."}}}},
    "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics.",
                         "security": [],
                         "responses": {"200": {"description": "Prometheus text format."}}}},
}

_PARAM = re.compile(r"\{(\w+)\}")


def _models(routes: Iterable[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    out: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for route in routes:
        if route.body is not None:
            out[(route.body, "validation")] = None
        for model in route.responses.values():
            if model is not None:
                out[(model, "serialization")] = None
    return list(out)


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` (plus the ops endpoints)."""
    routes = list(routes)
    refs, defs = models_json_schema(_models(routes), ref_template="#/components/schemas/{model}")
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, Any] = {}
    for route in routes:
        op: dict[str, Any] = {"operationId": route.handler, "summary": route.summary}
        if route.roles:
            op["description"] = "Roles: " + ", ".join(route.roles) + "."
            op["security"] = [{"bearer": []}]
        else:
            op["security"] = []
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(route.path)
        ]
        if route.query is not None:
            schema = route.query.model_json_schema()
            for name, prop in schema.get("properties", {}).items():
                params.append({"name": name, "in": "query",
                               "required": name in schema.get("required", []),
                               "description": prop.get("description", ""), "schema": prop})
        for name, text in route.headers.items():
            params.append({"name": name, "in": "header", "required": False,
                           "description": text,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(route.body, "validation")]}}}
        responses: dict[str, Any] = {}
        for status, model in route.responses.items():
            if model is None and status == 204:
                responses[str(status)] = {"description": "Done."}
            elif model is None:
                responses[str(status)] = {"description": "OK.", "content": {
                    "application/json": {"schema": {"type": "object"}}}}
            else:
                responses[str(status)] = {"description": model.__doc__ or "OK.", "content": {
                    "application/json": {"schema": refs[(model, "serialization")]}}}
        for status in route.errors:
            responses[str(status)] = {"description": _ERRORS[status], "content": {
                "application/json": {"schema": error_ref}}}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op
    paths.update(_OPS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dihya Webhooks — ingest API",
            "version": "1.0.0",
            "description": "Register webhook endpoints, publish events, manage API tokens. "
            "Every error has the body `{\"error\": {\"code\", \"message\", \"fields\"}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token (`dihya_…`)."}},
        },
    }
