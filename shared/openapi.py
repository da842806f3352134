"""OpenAPI 3.1 documents generated from a service's route table and its pydantic models.

Every service with an HTTP API (ingest, audit) describes each operation once, as a
:class:`Route`; the same table drives its router and :func:`document`. Schemas are the pydantic
models the handlers validate with or answer in (``model_json_schema``; OpenAPI 3.1 uses JSON
Schema 2020-12, which is what pydantic emits), so the document states what the API accepts and
returns. Each service's tests check that every served route is documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.contracts import Role

Method = Literal["GET", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Media:
    """A response in several media types (``None``: a text body, such as CSV)."""

    description: str
    content: Mapping[str, type[BaseModel] | None]


Answer = type[BaseModel] | Media | None
"""What a status answers: a JSON model, several media types, or (204) nothing / (else) any
JSON object."""


@dataclass(frozen=True)
class Route:
    """One operation: how it is routed and how the OpenAPI document describes it.

    ``errors`` lists the error statuses, each with the service's description of it, or as
    ``(status, description)`` where this operation says more. ``path_params`` describes the
    path's variables (else each is a plain string); ``operation_id`` defaults to ``handler``.
    """

    method: Method
    path: str
    handler: str
    summary: str
    roles: tuple[Role, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    responses: Mapping[int, Answer] = field(default_factory=dict)
    errors: tuple[int | tuple[int, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None
    operation_id: str | None = None


@dataclass(frozen=True)
class Service:
    """What the document says of the service as a whole."""

    title: str
    description: str
    errors: Mapping[int, str]
    """The description of each error status, for operations that do not say more."""
    error_model: type[BaseModel]
    """The body of every error response."""
    bearer: str = "An API token (`dihya_…`)."
    """How the bearer scheme is described."""


OPS: dict[str, Any] = {
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
"""The operations endpoints every service serves (:func:`shared.web.add_ops_routes`)."""

_PARAM = re.compile(r"\{(\w+)\}")
_REF = "#/components/schemas/{model}"


def _models(service: Service, routes: Iterable[Route]
            ) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    out: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (service.error_model, "serialization"): None}
    for route in routes:
        if route.body is not None:
            out[(route.body, "validation")] = None
        for answer in route.responses.values():
            models = answer.content.values() if isinstance(answer, Media) else (answer,)
            for model in models:
                if model is not None:
                    out[(model, "serialization")] = None
    return list(out)


def _model_params(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = schema.get("required", [])
    return [{"name": name, "in": where, "required": where == "path" or name in required,
             "description": prop.get("description", ""), "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def _parameters(route: Route) -> list[dict[str, Any]]:
    if route.path_params is not None:
        params = _model_params(route.path_params, "path")
    else:
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PARAM.findall(route.path)]
    if route.query is not None:
        params += _model_params(route.query, "query")
    for name, text in route.headers.items():
        params.append({"name": name, "in": "header", "required": False, "description": text,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
    return params


def _answer(status: int, answer: Answer, refs: Mapping[Any, Any]) -> dict[str, Any]:
    if isinstance(answer, Media):
        return {"description": answer.description, "content": {
            media: {"schema": refs[(model, "serialization")] if model else {"type": "string"}}
            for media, model in answer.content.items()}}
    if answer is None and status == 204:
        return {"description": "Done."}
    if answer is None:
        return {"description": "OK.", "content": {
            "application/json": {"schema": {"type": "object"}}}}
    return {"description": answer.__doc__ or "OK.", "content": {
        "application/json": {"schema": refs[(answer, "serialization")]}}}


def _operation(service: Service, route: Route, refs: Mapping[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id or route.handler,
                          "summary": route.summary}
    described = [route.description] if route.description else []
    if route.roles:
        described.append("Roles: " + ", ".join(route.roles) + ".")
    if described:
        op["description"] = " ".join(described)
    op["security"] = [{"bearer": []}] if route.roles else []
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": refs[(route.body, "validation")]}}}
    responses = {str(status): _answer(status, answer, refs)
                 for status, answer in route.responses.items()}
    error_ref = refs[(service.error_model, "serialization")]
    for entry in route.errors:
        status, text = entry if isinstance(entry, tuple) else (entry, service.errors[entry])
        responses[str(status)] = {"description": text, "content": {
            "application/json": {"schema": error_ref}}}
    op["responses"] = responses
    return op


def document(service: Service, routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``service`` serving ``routes`` (plus :data:`OPS`)."""
    routes = list(routes)
    refs, defs = models_json_schema(_models(service, routes), ref_template=_REF)
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(service, route, refs)
    paths.update(OPS)
    return {
        "openapi": "3.1.0",
        "info": {"title": service.title, "version": "1.0.0",
                 "description": service.description},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": service.bearer}},
        },
    }


def component(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A self-contained JSON Schema of the component ``name`` of ``doc`` (its ``$ref``s to
    other components resolve), to validate an answer with a JSON Schema validator."""
    return {"$ref": _REF.format(model=name), "components": doc["components"]}
