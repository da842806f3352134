"""The OpenAPI 3.1 document of the audit API, generated from the route table
(:func:`services.audit.http.routes`) and the pydantic models of :mod:`.models`, by
:mod:`shared.openapi` (as ingest's). ``tests/unit/test_audit_openapi.py`` checks that every
served route is documented and that the document is valid OpenAPI 3.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.audit.models import Error
from shared import openapi
from shared.openapi import Route

SERVICE = openapi.Service(
    title="Dihya audit API",
    description=(
        "Query, export and verify the append-only, hash-chained audit log of Dihya Webhooks. "
        "Roles `auditor` and `admin` may read and export it; only `admin` may erase a data "
        "subject or run a retention purge. Unknown query parameters are refused (422) so "
        "that a misspelt filter never returns everything. Every error has the body "
        "`{\"error\": {\"code\", \"message\", \"fields\"}}`."),
    errors={
        401: "No token, or an unknown or revoked one.",
        403: "The token's role may not read the audit log.",
        422: "A parameter is invalid; `fields` names it.",
    },
    error_model=Error,
)

ADMIN_ONLY = (403, "Only the `admin` role may do this (it cannot be undone).")


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` (plus the ops endpoints)."""
    return openapi.document(SERVICE, routes)
