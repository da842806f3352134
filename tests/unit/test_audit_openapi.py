"""The audit API's OpenAPI document is generated from its route table and models, as ingest's:
every served route is documented, the document is valid OpenAPI 3.1, and the answers the
handlers build validate against it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import jsonschema
import orjson
import pytest
import schemathesis

from services.audit import decisions, exports, openapi
from services.audit.decisions import GENESIS_HASH
from services.audit.http import OPENAPI, make_app, routes
from services.audit.store import Erasure, Purge
from shared.contracts import AuditFact
from shared.openapi import component

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
DOC = openapi.document(routes(500))


def served_routes() -> set[tuple[str, str]]:
    async def refused(*_: Any) -> None:
        return None

    app = make_app(cast(Any, None), lookup=cast(Any, None), on_refusal=refused, checks={},
                   page_limit=500)
    return {(route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None}


def test_every_served_route_is_documented_and_nothing_else() -> None:
    documented = {(method, path) for path, ops in DOC["paths"].items() for method in ops}
    assert served_routes() == documented


def test_the_document_served_is_the_generated_one() -> None:
    app = make_app(cast(Any, None), lookup=cast(Any, None), on_refusal=cast(Any, None),
                   checks={}, page_limit=500)
    assert orjson.loads(app[OPENAPI]) == DOC


@pytest.mark.parametrize("page_limit", [1, 100, 5000])
def test_the_document_is_valid_openapi_3_1(page_limit: int) -> None:
    schemathesis.openapi.from_dict(openapi.document(routes(page_limit))).validate()


def test_an_invalid_document_is_caught() -> None:
    """The check above can fail: a response without its description is refused."""
    broken = openapi.document(routes(100))
    del broken["paths"]["/v1/audit/verify"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(broken).validate()


def test_operations_declare_roles_and_error_bodies() -> None:
    erasure = DOC["paths"]["/v1/audit/subjects/{subject}/erasure"]["post"]
    assert erasure["security"] == [{"bearer": []}] and "Roles: admin." in erasure["description"]
    assert "admin" in erasure["responses"]["403"]["description"]
    for status in ("401", "403", "422", "503"):
        schema = erasure["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    records = DOC["paths"]["/v1/audit/records"]["get"]
    assert "Roles: auditor, admin, tenant_admin, tenant_viewer." in records["description"]
    assert "Roles: auditor, admin." in DOC["paths"]["/v1/audit/verify"]["get"]["description"]
    assert DOC["paths"]["/v1/openapi.json"]["get"]["security"] == []


def _fact(i: int) -> AuditFact:
    return AuditFact(id=f"fct_{i:05d}", kind="delivery.attempted",
                     occurred_at=T0 + timedelta(seconds=i), service="deliverer",
                     event_id=f"evt_{i}", delivery_id=f"dlv_{i}", attempt=1,
                     url="https://x.example/h", outcome="delivered", status_code=200,
                     duration_ms=12.5, details={"n": i})


def _records(n: int) -> list[decisions.Record]:
    return decisions.append([_fact(i) for i in range(n)], existing_ids=set(), head_seq=0,
                            head_hash=GENESIS_HASH, recorded_at=T0).records


def test_the_handlers_answers_validate() -> None:
    records = _records(3)
    page = {"records": [decisions.to_json(r) for r in records],
            "next_cursor": decisions.encode_cursor(3)}
    jsonschema.validate(page, component(DOC, "RecordsPage"))
    report = decisions.verify_chain(records).as_json()
    jsonschema.validate({**report, "signed_head": None}, component(DOC, "VerifyReport"))
    erased = Erasure("sbj_" + "0" * 32, 3, 0, 9, T0).as_json()
    jsonschema.validate(erased, component(DOC, "Erasure"))
    jsonschema.validate(Purge(0, None, 0, T0).as_json(), component(DOC, "Purge"))
    summary = exports.SubjectSummary()
    for record in records:
        summary.feed(record)
    document = (exports.subject_head("user-1", T0) + exports.subject_records(records, True)
                + summary.tail())
    jsonschema.validate(orjson.loads(document), component(DOC, "SubjectExport"))
    for line in exports.jsonl(records).splitlines():
        jsonschema.validate(orjson.loads(line), component(DOC, "AuditRecord"))


def test_a_wrong_answer_is_refused() -> None:
    record = decisions.to_json(_records(1)[0])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**record, "extra": 1}, component(DOC, "AuditRecord"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**record, "kind": "no.such"}, component(DOC, "AuditRecord"))
