"""Validation of ingest's HTTP request bodies: clear, field-named errors; never echo values."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from services.ingest.decisions import schedule_ms, schedule_seconds
from services.ingest.http import ListQuery, generate_secret, generate_token
from services.ingest.models import (
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
    SecretRotate,
    TokenCreate,
)
from shared.web import validation_error


def fields_of(model: type[Any], data: Any, **context: Any) -> set[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data, context=context or None)
    return {".".join(str(p) for p in e["loc"]) or "(body)" for e in info.value.errors()}


def test_a_valid_endpoint() -> None:
    body = EndpointCreate.model_validate({
        "url": "https://hooks.example.com:8443/dihya?x=1", "events": ["template.created",
        "incident.*", "#", "template.created"], "description": "ops"})
    assert body.events == ["template.created", "incident.*", "#"]  # duplicates dropped
    assert body.secret is None


@pytest.mark.parametrize("url", [
    "ftp://example.com/x", "https:///nohost", "example.com/hook", "https://user:pw@example.com/",
    "https://exa mple.com/", "https://example.com:99999/", "http://example.com/\x00",
    "https://example.com/" + "a" * 2048, "",
])
def test_bad_urls(url: str) -> None:
    assert fields_of(EndpointCreate, {"url": url, "events": ["a.b"]}) == {"url"}


@pytest.mark.parametrize("events", [[], ["Template.Created"], ["a..b"], ["a.*b"], [""], "a.b",
                                    ["a"] * 65])
def test_bad_event_patterns(events: Any) -> None:
    found = fields_of(EndpointCreate, {"url": "https://e.com/", "events": events})
    assert found and all(f.startswith("events") for f in found)


def test_secret_length_follows_the_setting() -> None:
    base = {"url": "https://e.com/", "events": ["a.b"]}
    assert fields_of(EndpointCreate, {**base, "secret": "x" * 15}) == {"secret"}
    assert EndpointCreate.model_validate({**base, "secret": "x" * 16}).secret == "x" * 16
    assert fields_of(EndpointCreate, {**base, "secret": "x" * 20}, secret_min_length=24) == {
        "secret"}
    assert fields_of(EndpointCreate, {**base, "secret": "x" * 257}) == {"secret"}
    assert fields_of(EndpointCreate, {**base, "secret": "with spaces inside it"}) == {"secret"}
    assert fields_of(EndpointCreate, {**base, "secret": "tab\tseparated-secret"}) == {"secret"}


def test_unknown_and_missing_fields_are_named() -> None:
    assert fields_of(EndpointCreate, {"url": "https://e.com/", "evnts": ["a"]}) == {
        "events", "evnts"}
    assert fields_of(EndpointCreate, []) == {"(body)"}


def test_errors_do_not_echo_the_secret() -> None:
    secret = "short-SECRET"
    with pytest.raises(ValidationError) as info:
        EndpointCreate.model_validate({"url": "https://e.com/", "events": ["a"],
                                       "secret": secret})
    body = orjson.loads(validation_error(info.value).body)  # type: ignore[arg-type]
    assert body["error"]["fields"][0]["field"] == "secret"
    assert secret not in orjson.dumps(body).decode()


def test_update_needs_a_field_and_refuses_nulls_except_description() -> None:
    assert fields_of(EndpointUpdate, {}) == {"(body)"}
    assert fields_of(EndpointUpdate, {"url": None}) == {"url"}
    assert fields_of(EndpointUpdate, {"status": "paused"}) == {"status"}
    cleared = EndpointUpdate.model_validate({"description": None})
    assert cleared.model_fields_set == {"description"}
    ok = EndpointUpdate.model_validate({"status": "disabled", "events": ["a.#"]})
    assert ok.status == "disabled" and ok.model_fields_set == {"status", "events"}


def test_tokens_and_rotation() -> None:
    assert TokenCreate.model_validate({"role": "publisher"}).role == "publisher"
    assert fields_of(TokenCreate, {"role": "root"}) == {"role"}
    assert SecretRotate.model_validate({}).overlap_seconds == 86400
    assert fields_of(SecretRotate, {"overlap_seconds": -1}) == {"overlap_seconds"}
    assert fields_of(SecretRotate, {"overlap_seconds": 8 * 86400}) == {"overlap_seconds"}


def test_list_query() -> None:
    assert ListQuery.model_validate({}).limit == 100
    assert fields_of(ListQuery, {"limit": "0"}) == {"limit"}
    assert fields_of(ListQuery, {"limit": "many"}) == {"limit"}


def test_generated_secrets_and_tokens() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 24
    assert generate_secret() != secret
    token = generate_token()
    assert token.startswith("dihya_") and len(token) >= 6 + 43
    assert generate_token() != token


# -- an endpoint's own retry schedule ------------------------------------------------------

BASE = {"url": "https://e.com/", "events": ["a.b"]}


def test_a_retry_schedule_is_optional_in_seconds_with_millisecond_precision() -> None:
    assert EndpointCreate.model_validate(BASE).retry_schedule is None
    body = EndpointCreate.model_validate({**BASE, "retry_schedule": [1, 2.5, 60, 172800]})
    assert body.retry_schedule == [1, 2.5, 60, 172800]
    assert schedule_ms(body.retry_schedule) == (1_000, 2_500, 60_000, 172_800_000)
    assert schedule_ms([1.0004]) == (1_000,)  # whole milliseconds on the wire
    assert EndpointCreate.model_validate({**BASE, "retry_schedule": []}).retry_schedule == []
    assert schedule_ms([]) == () and schedule_ms(None) is None
    assert EndpointCreate.model_validate({**BASE, "retry_schedule": [5] * 20})


@pytest.mark.parametrize("schedule", [
    [0.999], [0], [-5], [172800.5], [86400 * 3], [1] * 21, ["5"], [True], [None], [[5]],
    "5s,5m", 5, {"a": 1},
])
def test_bad_retry_schedules_are_named(schedule: Any) -> None:
    found = fields_of(EndpointCreate, {**BASE, "retry_schedule": schedule})
    assert found and all(f.startswith("retry_schedule") for f in found)
    found = fields_of(EndpointUpdate, {"retry_schedule": schedule})
    assert found and all(f.startswith("retry_schedule") for f in found)


def test_a_retry_schedule_can_be_changed_or_cleared_by_an_update() -> None:
    cleared = EndpointUpdate.model_validate({"retry_schedule": None})
    assert cleared.model_fields_set == {"retry_schedule"} and cleared.retry_schedule is None
    changed = EndpointUpdate.model_validate({"retry_schedule": [30, 300]})
    assert changed.retry_schedule == [30, 300]
    untouched = EndpointUpdate.model_validate({"description": "x"})
    assert "retry_schedule" not in untouched.model_fields_set


def test_a_retry_schedule_reads_back_in_seconds_as_written() -> None:
    assert schedule_seconds((1_000, 2_500, 250)) == [1, 2.5, 0.25]
    assert schedule_seconds(()) == [] and schedule_seconds(None) is None
    now = datetime(2025, 6, 1, tzinfo=UTC)
    out = EndpointOut(id="ep_1", url="https://e.com/", events=["a.b"], description=None,
                      status="enabled", created_at=now, updated_at=now,
                      retry_schedule=schedule_seconds((5_000, 1_500)))
    assert orjson.loads(orjson.dumps(out.model_dump(mode="json")))["retry_schedule"] == [5, 1.5]
    assert b'"retry_schedule":[5,1.5]' in orjson.dumps(out.model_dump(mode="json"))
