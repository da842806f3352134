"""Signer's pure signing: the Standard Webhooks vector, library interop, tamper-evidence."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.signer.consumer import new_nonce
from services.signer.decisions import (
    USER_AGENT,
    StoredSecret,
    UnsignableJobError,
    dihya_signature,
    hmac_key,
    iso_z,
    sign,
    standard_signature,
    standard_webhooks_secret,
    valid_secrets,
)
from shared.contracts import DeliveryJob, Event, utcnow

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FREE = "my admin-chosen secret, naïve & long"
NONCE = "0123456789abcdef0123456789abcdef"


def make_job(*, lang: str | None = "fr", attempt: int = 1, event_id: str = "evt_01") -> DeliveryJob:
    event = Event.model_validate({
        "id": event_id, "event": "template.created",
        "timestamp": "2025-05-20T12:00:00Z", "lang": lang,
        "data": {"template_id": "abc123", "user_id": "user42",
                 "details": {"fr": "Créé", "en": "Created", "ar": "أُنشئ", "tzm": "ⵉⵜⵜⵓⵙⴽⵔ"}},
    })
    return DeliveryJob(delivery_id="dlv_01", endpoint_id="ep_01", url="https://r.example/h",
                       event=event, attempt=attempt)


def test_standard_webhooks_known_vector() -> None:
    sig = standard_signature(hmac_key(WHSEC), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                             b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_body_is_the_guide_template_plus_id_and_delivery_block() -> None:
    now = datetime(2025, 5, 20, 12, 0, 5, tzinfo=UTC)
    out = sign(make_job(attempt=3), [FREE], nonce=NONCE, now=now)
    body = orjson.loads(out.body)
    assert list(body) == ["id", "event", "timestamp", "lang", "data", "delivery"]
    assert body["id"] == "evt_01"
    assert body["event"] == "template.created"
    assert body["timestamp"] == "2025-05-20T12:00:00Z"
    assert body["lang"] == "fr"
    assert body["data"]["details"]["tzm"] == "ⵉⵜⵜⵓⵙⴽⵔ"
    assert body["delivery"] == {"id": "dlv_01", "attempt": 3, "nonce": NONCE,
                                "timestamp": int(now.timestamp())}
    assert out.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert out.headers["webhook-id"] == "evt_01"
    assert out.headers["X-Dihya-Event"] == "template.created"
    assert out.headers["X-Dihya-Delivery"] == "dlv_01"
    assert out.headers["X-Dihya-Attempt"] == "3"
    assert out.headers["Content-Type"] == "application/json"
    assert out.headers["User-Agent"] == USER_AGENT
    assert out.signed_at == now
    assert FREE not in out.model_dump_json()


def test_lang_is_omitted_when_absent() -> None:
    body = orjson.loads(sign(make_job(lang=None), [FREE], nonce=NONCE, now=utcnow()).body)
    assert "lang" not in body


def test_job_without_event_id_cannot_be_signed() -> None:
    job = make_job().model_copy(update={"event": Event(event="a.b", data={})})
    with pytest.raises(UnsignableJobError):
        sign(job, [FREE], nonce=NONCE, now=utcnow())
    with pytest.raises(UnsignableJobError):
        sign(make_job(), [], nonce=NONCE, now=utcnow())


def test_dihya_signature_is_what_the_guide_flask_receiver_computes() -> None:
    for secret in (FREE, WHSEC):
        out = sign(make_job(), [secret], nonce=NONCE, now=utcnow())
        request_data = out.body.encode()
        expected = hmac.new(secret.encode(), request_data, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(out.headers["X-Dihya-Signature"], expected)


@pytest.mark.parametrize("secret", [WHSEC, FREE, "whsec_not*base64!", "short"])
def test_standard_webhooks_library_verifies_our_output(secret: str) -> None:
    out = sign(make_job(), [secret], nonce=NONCE, now=utcnow())
    payload = Webhook(standard_webhooks_secret(secret)).verify(out.body.encode(), out.headers)
    assert payload["delivery"]["nonce"] == NONCE


def test_whsec_secret_is_given_to_libraries_unchanged_and_free_form_is_converted() -> None:
    assert standard_webhooks_secret(WHSEC) == WHSEC
    assert hmac_key(WHSEC) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert hmac_key(FREE) == FREE.encode()
    assert standard_webhooks_secret(FREE) == "whsec_" + base64.b64encode(FREE.encode()).decode()
    assert hmac_key("whsec_") == b"whsec_"  # nothing to decode: free-form


def test_rotation_two_signatures_both_verify_current_first() -> None:
    old, new = FREE, WHSEC
    out = sign(make_job(), [new, old], nonce=NONCE, now=utcnow())
    sigs = out.headers["webhook-signature"].split(" ")
    assert len(sigs) == 2
    assert all(s.startswith("v1,") for s in sigs)
    for secret in (new, old):
        Webhook(standard_webhooks_secret(secret)).verify(out.body.encode(), out.headers)
    assert out.headers["X-Dihya-Signature"] == dihya_signature(new, out.body.encode())
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_webhooks_secret("some other secret")).verify(
            out.body.encode(), out.headers)


def test_every_attempt_gets_a_fresh_nonce_and_signature() -> None:
    nonces = {new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces)
    now = utcnow()
    a = sign(make_job(), [FREE], nonce=new_nonce(), now=now)
    b = sign(make_job(), [FREE], nonce=new_nonce(), now=now + timedelta(seconds=7))
    assert a.body != b.body
    assert a.headers["webhook-id"] == b.headers["webhook-id"]
    assert a.headers["webhook-signature"] != b.headers["webhook-signature"]
    assert a.headers["X-Dihya-Signature"] != b.headers["X-Dihya-Signature"]
    with pytest.raises(ValueError, match="nonce"):
        sign(make_job(), [FREE], nonce="not-hex", now=now)


def _verifies(key: bytes, msg_id: str, ts: str, body: bytes, header: str) -> bool:
    """A receiver's Standard Webhooks check, on bytes (a flipped byte may not be UTF-8)."""
    mac = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body,
                   hashlib.sha256).digest()
    return any(hmac.compare_digest(base64.b64decode(s[3:]), mac)
               for s in header.split(" ") if s.startswith("v1,"))


def _flip(data: bytes, index: int, bit: int) -> bytes:
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(0, 7),
       part=st.sampled_from(["body", "timestamp", "id"]),
       secret=st.sampled_from([WHSEC, FREE]))
def test_flipping_any_byte_breaks_both_signatures(index: int, bit: int, part: str,
                                                   secret: str) -> None:
    out = sign(make_job(), [secret], nonce=NONCE, now=utcnow())
    body, ts, msg_id = (out.body.encode(), out.headers["webhook-timestamp"],
                        out.headers["webhook-id"])
    key, header = hmac_key(secret), out.headers["webhook-signature"]
    assert _verifies(key, msg_id, ts, body, header)
    if part == "body":
        body = _flip(body, index, bit)
        assert not hmac.compare_digest(dihya_signature(secret, body),
                                       out.headers["X-Dihya-Signature"])
    elif part == "timestamp":
        ts = _flip(ts.encode(), index, bit).decode("latin-1")
    else:
        msg_id = _flip(msg_id.encode(), index, bit).decode("latin-1")
    assert not _verifies(key, msg_id, ts, body, header)


def test_iso_z() -> None:
    assert iso_z(datetime(2025, 5, 20, 12, 0, tzinfo=UTC)) == "2025-05-20T12:00:00Z"
    plus_one = datetime.fromisoformat("2025-05-20T13:00:00.250+01:00")
    assert iso_z(plus_one) == "2025-05-20T12:00:00.250Z"


def test_valid_secrets_current_first_expired_dropped() -> None:
    now = utcnow()
    rows = [
        StoredSecret("older", now - timedelta(days=2), now + timedelta(hours=1)),
        StoredSecret("expired", now - timedelta(days=3), now - timedelta(seconds=1)),
        StoredSecret("current", now - timedelta(days=1), None),
        StoredSecret("previous", now - timedelta(days=1, seconds=-1), now + timedelta(hours=1)),
    ]
    assert valid_secrets(rows, now) == ("current", "previous", "older")
    assert "current" not in repr(rows[2])
