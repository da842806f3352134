"""Contracts stay compatible: the committed schemas match the models, old messages still parse.

* ``test_committed_schema_matches_model``: a model edited without regenerating its committed
  schema (``python -m shared.schemas``) fails here, so every contract change shows up in review.
* ``test_old_samples_still_accepted``: messages of a released version (``samples/``) must still
  validate with today's model — a change that would break consumers of old producers fails.
* ``test_current_output_fits_committed_schema``: what today's producers emit must satisfy the
  committed schema, i.e. what deployed consumers of the same version accept.
* ``test_todays_writers_fit_old_readers``: re-encoded today, a released message carries no field
  its release's readers did not know, so a rolling upgrade (new writers, old readers, every
  contract refusing unknown fields) parks nothing that uses no newer feature.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared import contracts
from shared.contracts import CONTRACTS, schema_of
from tests.contracts.make_samples import SAMPLES

SCHEMAS = Path(contracts.__file__).parent / "schemas"
SAMPLE_DIR = Path(__file__).parent / "samples"
BY_NAME = {m.__name__: m for m in CONTRACTS}


@pytest.mark.parametrize("model", CONTRACTS, ids=lambda m: m.__name__)
def test_committed_schema_matches_model(model: type[contracts.Contract]) -> None:
    committed = json.loads((SCHEMAS / f"{model.__name__}.json").read_text())
    assert committed == schema_of(model), (
        f"{model.__name__} changed: run `python -m shared.schemas` and review the diff; "
        "a breaking change needs a new version, not an edit"
    )


@pytest.mark.parametrize("path", sorted(SAMPLE_DIR.glob("*.json")), ids=lambda p: p.name)
def test_old_samples_still_accepted(path: Path) -> None:
    model = BY_NAME[path.name.split(".")[0]]
    model.model_validate_json(path.read_bytes())


@pytest.mark.parametrize("path", sorted(SAMPLE_DIR.glob("*.json")), ids=lambda p: p.name)
def test_todays_writers_fit_old_readers(path: Path) -> None:
    model = BY_NAME[path.name.split(".")[0]]
    released = orjson.loads(path.read_bytes())
    rewritten = orjson.loads(contracts.encode(model.model_validate(released)))
    assert _keys(rewritten) <= _keys(released), "a field the released readers refuse"
    assert model.model_validate(rewritten) == model.model_validate(released)


def _keys(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a contract's JSON, down through objects and lists."""
    if isinstance(value, dict):
        paths = set()
        for key, item in value.items():
            paths |= {prefix + key} | _keys(item, prefix + key + ".")
        return paths
    if isinstance(value, list):
        return set().union(*(_keys(item, prefix) for item in value))
    return set()


def test_none_inside_event_data_is_kept() -> None:
    event = contracts.Event(event="a.b", data={"gone": None, "list": [None]})
    assert orjson.loads(contracts.encode(event))["data"] == {"gone": None, "list": [None]}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_current_output_fits_committed_schema(name: str) -> None:
    model = SAMPLES[name]
    schema = json.loads((SCHEMAS / f"{type(model).__name__}.json").read_text())
    jsonschema.validate(json.loads(contracts.encode(model)), schema)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        contracts.Event.model_validate({"event": "a.b", "data": {}, "surprise": 1})


def test_contracts_are_frozen() -> None:
    event = contracts.Event(event="a.b", data={})
    with pytest.raises(ValidationError):
        event.event = "c.d"  # type: ignore[misc]


def test_secret_hidden_from_repr_but_sent_on_the_wire() -> None:
    msg = SAMPLES["EndpointSecret"]
    assert "whsec_" not in repr(msg) and "whsec_" not in str(msg)
    assert b"whsec_" in contracts.encode(msg)


def test_only_the_secret_message_can_carry_a_secret() -> None:
    """No other contract has a field that could hold a secret."""
    for model in CONTRACTS:
        if model is contracts.EndpointSecret:
            continue
        assert not {"secret", "token", "password"} & set(model.model_fields), model.__name__


def test_committed_asyncapi_document_is_current() -> None:
    from shared import asyncapi

    committed = json.loads(asyncapi.DOC_PATH.read_text())
    assert committed == json.loads(json.dumps(asyncapi.build())), (
        "run `python -m shared.asyncapi` to refresh docs/asyncapi.json"
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(data=st.dictionaries(st.text(), json_values, max_size=6))
def test_encode_is_the_json_of_the_models_dump_and_reads_back(data: dict[str, Any]) -> None:
    """``encode`` takes pydantic's serialiser: the bytes orjson made of the dump before, and the
    receiving model reads back the same contract."""
    job = contracts.DeliveryJob(
        delivery_id="dlv_1", endpoint_id="ep_1", url="https://r.example/hook",
        event=contracts.Event(id="evt_1", event="a.b", timestamp=datetime(2026, 1, 2, tzinfo=UTC),
                              data=data))
    wire = contracts.encode(job)
    assert wire == orjson.dumps(job.model_dump(mode="json", exclude_none=True))
    assert contracts.DeliveryJob.model_validate_json(wire) == job
