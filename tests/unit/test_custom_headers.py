"""Custom headers: which names are refused, and the seal between signer and deliverer."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, MultiFernet
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.models import EndpointCreate, EndpointUpdate
from shared.custom_headers import HeadersKeyError, refusal, seal, unseal

KEY = MultiFernet([Fernet(Fernet.generate_key())])


@pytest.mark.parametrize("name", [
    "Content-Type", "content-length", "HOST", "User-Agent", "Connection", "Keep-Alive",
    "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "traceparent",
    "webhook-signature", "Webhook-Id", "X-Dihya-Signature", "x-dihya-anything", "bad name",
    "colon:", "",
])
def test_reserved_or_malformed_names_are_refused(name: str) -> None:
    assert refusal(name, "v") is not None
    with pytest.raises(ValidationError):
        EndpointCreate(url="https://r.example/h", events=["a.b"], headers={name: "v"})


def test_values_with_line_breaks_are_refused_without_being_repeated() -> None:
    with pytest.raises(ValidationError) as info:
        EndpointUpdate(headers={"X-Api-Key": "secret-part\r\nX-Evil: 1"})
    # the message the API shows (ingest drops pydantic's input echo) names, never repeats
    [err] = info.value.errors(include_input=False)
    assert "X-Api-Key" in err["msg"] and "secret-part" not in str(err)


def test_ordinary_gateway_headers_are_accepted() -> None:
    body = EndpointCreate(url="https://r.example/h", events=["a.b"],
                          headers={"X-Api-Key": "k 1", "Authorization": "Bearer t"})
    assert body.headers == {"X-Api-Key": "k 1", "Authorization": "Bearer t"}
    with pytest.raises(ValidationError):  # same name twice, case-insensitively
        EndpointCreate(url="https://r.example/h", events=["a.b"],
                       headers={"X-Api-Key": "a", "x-api-key": "b"})


@given(st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
                       st.text(st.characters(min_codepoint=32, max_codepoint=126),
                               max_size=50), max_size=5))
def test_seal_round_trip(headers: dict[str, str]) -> None:
    token = seal(headers, "dlv_1", KEY)
    for value in headers.values():
        if len(value) > 3:
            assert value not in token
    assert unseal(token, "dlv_1", KEY) == headers


def test_a_seal_opens_only_for_its_delivery_and_key() -> None:
    token = seal({"X-Api-Key": "k"}, "dlv_1", KEY)
    with pytest.raises(HeadersKeyError):
        unseal(token, "dlv_2", KEY)
    with pytest.raises(HeadersKeyError):
        unseal(token, "dlv_1", MultiFernet([Fernet(Fernet.generate_key())]))


def test_the_deliverer_drops_reserved_names_even_if_sealed() -> None:
    token = seal({"X-Api-Key": "k", "Host": "evil", "webhook-id": "x"}, "dlv_1", KEY)
    assert unseal(token, "dlv_1", KEY) == {"X-Api-Key": "k"}
