"""Fuzz the HTTP APIs from their own OpenAPI documents: bad input never gets a 5xx.

Schemathesis generates requests for every documented operation — valid ones and deliberately
invalid ones (wrong types, missing fields, odd strings) — and sends them, authenticated as
admin, to the real services running as processes. Every answer must be below 500.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from launcher.processes import System

EXAMPLES = int(os.environ.get("DIHYA_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
async def fuzzed(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[System]:
    system = System(amqp_url, Path(tmp_path_factory.mktemp("fuzz")))
    try:
        await system.start("audit", "signer", "ingest")  # a start that times out still stops
        yield system
    finally:
        codes = await system.stop()
    assert all(code == 0 for code in codes.values()), codes


def _schema(system: System, service: str, path: str) -> Any:
    doc = requests.get(system.url(service) + path, timeout=10).json()
    return schemathesis.openapi.from_dict(doc)


@pytest.fixture(scope="module")
def ingest_api(fuzzed: System) -> Any:
    return _schema(fuzzed, "ingest", "/v1/openapi.json")


@pytest.fixture(scope="module")
def audit_api(fuzzed: System) -> Any:
    return _schema(fuzzed, "audit", "/v1/openapi.json")


def _check(case: Any, system: System, service: str) -> None:
    response = case.call(base_url=system.url(service), timeout=10,
                         headers={"Authorization": f"Bearer {system.admin_token}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:300]}")


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def _fuzz(schema: Any, system: System, service: str) -> list[str]:
    """Drive every operation with valid and invalid cases; return the operations driven."""
    driven = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                _check(case, system, service)

            try:
                run()
            except Unsatisfiable:
                # nothing in this operation can be made invalid (no body, no parameters)
                assert mode is GenerationMode.NEGATIVE, operation.label
        driven.append(operation.label)
    return driven


def test_ingest_api_never_answers_5xx(ingest_api: Any, fuzzed: System) -> None:
    driven = _fuzz(ingest_api, fuzzed, "ingest")
    assert "POST /v1/events" in driven
    assert "POST /v1/endpoints" in driven


def test_audit_api_never_answers_5xx(audit_api: Any, fuzzed: System) -> None:
    driven = _fuzz(audit_api, fuzzed, "audit")
    assert "GET /v1/audit/records" in driven
