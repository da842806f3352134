"""The OpenAPI 3.1 document of the ingest API, generated from the route table
(:data:`services.ingest.http.ROUTES`) and the pydantic models the handlers validate with, by
:mod:`shared.openapi` (as audit's). ``tests/unit/test_ingest_openapi.py`` checks that every
served route is documented.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.ingest.models import ErrorBody
from shared import openapi
from shared.openapi import Route

__all__ = ["Route", "document"]

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
    503: "The broker or the database is unavailable; `message` says what was and was not "
         "done (a lost confirm can hide a message that did arrive, e.g. a secret the signer "
         "already holds). Retry. `broker_unconfirmed` (publishing an event): the event may "
         "or may not have been "
         "accepted; retry with the same Idempotency-Key, or with `error.event_id` as the "
         "body's `id`, and it is delivered once.",
}

SERVICE = openapi.Service(
    title="Dihya Webhooks — ingest API",
    description="Register webhook endpoints, publish events, manage API tokens. "
    "Every error has the body `{\"error\": {\"code\", \"message\", \"fields\"}}`.",
    errors=_ERRORS,
    error_model=ErrorBody,
)


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` (plus the ops endpoints)."""
    return openapi.document(SERVICE, routes)
