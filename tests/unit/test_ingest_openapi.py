"""The OpenAPI document states exactly what the ingest API serves and accepts."""

from __future__ import annotations

from typing import Any, cast

import schemathesis
from pydantic import BaseModel, SecretStr

from services.ingest.http import ROUTES, IngestApi, build_app
from services.ingest.models import EndpointCreate, EndpointUpdate, TokenCreate
from services.ingest.openapi import document
from services.ingest.settings import Settings
from shared.contracts import Event


def served_routes() -> set[tuple[str, str]]:
    settings = Settings(admin_token=SecretStr("x" * 32))
    api = IngestApi(settings, cast(Any, None), cast(Any, None))
    app = build_app(api, {})
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_served_route_is_documented_and_nothing_else() -> None:
    doc = document(ROUTES)
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served_routes() == documented


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].rsplit("/", 1)[-1]
    return cast(dict[str, Any], doc["components"]["schemas"][name])


def test_request_schemas_are_the_models_schemas() -> None:
    doc = document(ROUTES)
    assert doc["openapi"] == "3.1.0"
    cases: list[tuple[str, str, type[BaseModel]]] = [
        ("/v1/endpoints", "post", EndpointCreate), ("/v1/endpoints/{id}", "patch", EndpointUpdate),
        ("/v1/tokens", "post", TokenCreate), ("/v1/events", "post", Event)]
    for path, method, model in cases:
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.pop("$defs", None)
        assert _resolve(doc, body["schema"]) == expected, (path, method)


def test_operations_declare_auth_and_error_bodies() -> None:
    doc = document(ROUTES)
    create = doc["paths"]["/v1/endpoints"]["post"]
    assert create["security"] == [{"bearer": []}]
    for status in ("401", "403", "413", "415", "422", "503"):
        schema = create["responses"][status]["content"]["application/json"]["schema"]
        assert _resolve(doc, schema)["properties"].keys() == {"error"}
    created = create["responses"]["201"]["content"]["application/json"]["schema"]
    assert "secret" in _resolve(doc, created)["properties"]
    listed = doc["paths"]["/v1/endpoints"]["get"]["responses"]["200"]["content"]
    item_ref = _resolve(doc, listed["application/json"]["schema"])["properties"]["items"]
    assert "secret" not in _resolve(doc, item_ref["items"])["properties"]
    events = doc["paths"]["/v1/events"]["post"]
    assert {p["name"] for p in events["parameters"]} == {"Idempotency-Key"}
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []


def test_lists_document_their_tenant_filter() -> None:
    """The endpoint list and the message log (events, deliveries) take ``?tenant=``."""
    doc = document(ROUTES)
    for path in ("/v1/endpoints", "/v1/events", "/v1/deliveries"):
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        assert params["tenant"]["in"] == "query", path
        assert "external id" in params["tenant"]["description"], path


def test_the_document_is_valid_openapi_3_1() -> None:
    schemathesis.openapi.from_dict(document(ROUTES)).validate()
