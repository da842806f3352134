"""Pure signing logic: no I/O, no clock, no randomness — the caller passes ``now`` and ``nonce``.

What a receiver gets for one attempt of one job:

* **Body** — the exact bytes POSTed (orjson): the guide's payload template plus an ``id`` and a
  ``delivery`` block::

      {"id": "evt_…", "event": "template.created", "timestamp": "2025-05-20T12:00:00Z",
       "lang": "fr", "data": {…},
       "delivery": {"id": "dlv_…", "attempt": 1, "nonce": "<32 hex>", "timestamp": 1716206400}}

  The nonce and the attempt's unix timestamp live *inside* the signed body, so both signature
  schemes bind body, timestamp and nonce. Every attempt is re-signed: fresh timestamp, new nonce.
* **Standard Webhooks headers** — ``webhook-id`` (the event id, stable across attempts and
  endpoints' retries: receivers de-duplicate on it), ``webhook-timestamp`` (same seconds as
  ``delivery.timestamp``) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key,
  "{id}.{timestamp}.{body}")>``, one per valid secret, current first, space-separated — so a
  receiver verifies during a rotation whichever secret it holds.

  An ``ed25519`` endpoint's keystore holds ``whsk_`` signing keys instead of HMAC secrets
  (:mod:`shared.signing_keys`): each signs a ``v1a,<base64 ed25519 signature>`` over the same
  ``"{id}.{timestamp}.{body}"``, current key first, and the receiver checks it with the
  endpoint's ``whpk_`` public key.

  The HMAC key: a ``whsec_<base64>`` secret is used as Standard Webhooks defines it (the decoded
  bytes). Any other, free-form secret is used as its UTF-8 bytes; a Standard Webhooks library must
  then be given :func:`standard_webhooks_secret` of it, i.e. ``"whsec_" + base64(secret)``.
* ``X-Dihya-Signature`` — hex HMAC-SHA256 of the raw body keyed with the *current* secret string's
  UTF-8 bytes, exactly as the administrator received it: what the guide's Flask, Express and
  Django receivers compute, so they work unchanged. Sent only while the current secret is an
  HMAC secret: an ``ed25519`` endpoint has no shared secret to compute it with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from shared import custom_headers
from shared.contracts import AuditFact, DeliveryJob, EndpointSecret, SignedDelivery, decode_jobs
from shared.ids import fact_id
from shared.signing_keys import InvalidKeyError, is_signing_key, load_signing_key, sign_v1a

WHSEC_PREFIX = "whsec_"
USER_AGENT = "Dihya-Webhooks/0.1"
_NONCE = re.compile(r"^[0-9a-f]{32}$")


class UnsignableJobError(ValueError):
    """A job the signer cannot turn into a delivery (it is parked, not retried)."""


@dataclass(frozen=True)
class StoredSecret:
    """A decrypted keystore row. ``repr`` hides the value so it never lands in a log line."""

    value: str = field(repr=False)
    created_at: datetime
    valid_until: datetime | None  # None: the current secret


def valid_secrets(rows: Sequence[StoredSecret], now: datetime) -> tuple[str, ...]:
    """The secrets that may sign at ``now``: the current one first, then the newest previous.

    A previous secret signs until its overlap deadline (``valid_until``), after which it is
    simply ignored (the keystore drops expired rows on the next rotation).
    """
    current = [r for r in rows if r.valid_until is None]
    previous = [r for r in rows if r.valid_until is not None and r.valid_until > now]
    current.sort(key=lambda r: r.created_at, reverse=True)
    previous.sort(key=lambda r: r.created_at, reverse=True)
    return tuple(r.value for r in current + previous)


def hmac_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key of ``secret`` (see the module docstring)."""
    if secret.startswith(WHSEC_PREFIX):
        rest = secret[len(WHSEC_PREFIX):]
        try:
            key = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key:
            return key
    return secret.encode()


def standard_webhooks_secret(secret: str) -> str:
    """The secret to give a Standard Webhooks library so it verifies our ``webhook-signature``.

    ``whsec_`` secrets are returned as they are; a free-form secret becomes
    ``"whsec_" + base64(secret UTF-8)`` — the same key bytes :func:`hmac_key` signs with.
    """
    key = hmac_key(secret)
    if key != secret.encode():
        return secret
    return WHSEC_PREFIX + base64.b64encode(key).decode()


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` Standard Webhooks signature."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` entry of one secret: ``v1a`` for a ``whsk_`` signing key,
    ``v1`` (HMAC) for anything else."""
    if not is_signing_key(secret):
        return standard_signature(hmac_key(secret), msg_id, timestamp, body)
    try:
        key = load_signing_key(secret)
    except InvalidKeyError as exc:  # the message never repeats the key
        raise UnsignableJobError(f"the endpoint's signing key is unusable: {exc}") from None
    return sign_v1a(key, msg_id, timestamp, body)


def dihya_signature(secret: str, body: bytes) -> str:
    """``X-Dihya-Signature``: what the guide's receivers compute over the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def iso_z(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as in the guide (milliseconds only when there are some)."""
    moment = moment.astimezone(UTC)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def render_body(job: DeliveryJob, *, nonce: str, timestamp: int) -> bytes:
    """The exact body bytes of one attempt (see the module docstring)."""
    event = job.event
    if event.id is None or event.timestamp is None:
        raise UnsignableJobError("the job's event has no id or timestamp (ingest sets both)")
    payload: dict[str, Any] = {"id": event.id, "event": event.event,
                               "timestamp": iso_z(event.timestamp)}
    if event.lang is not None:
        payload["lang"] = event.lang
    payload["data"] = event.data
    payload["delivery"] = {"id": job.delivery_id, "attempt": job.attempt, "nonce": nonce,
                           "timestamp": timestamp}
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise UnsignableJobError(f"the event data cannot be encoded as JSON: {exc}") from None


def sign(job: DeliveryJob, secrets: Sequence[str], *, nonce: str, now: datetime,
         sealed_headers: str | None = None) -> SignedDelivery:
    """Sign one attempt of ``job`` with ``secrets`` (current first); ``sealed_headers``: the
    endpoint's custom headers as :func:`shared.custom_headers.seal` made them."""
    if not secrets:
        raise UnsignableJobError("no secret to sign with")
    if not _NONCE.match(nonce):
        raise ValueError("nonce must be 32 lowercase hex digits")
    timestamp = int(now.timestamp())
    body = render_body(job, nonce=nonce, timestamp=timestamp)
    msg_id = job.event.id
    assert msg_id is not None  # render_body checked it
    signatures = " ".join(signature(s, msg_id, timestamp, body) for s in secrets)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "X-Dihya-Event": job.event.event,
        "X-Dihya-Delivery": job.delivery_id,
        "X-Dihya-Attempt": str(job.attempt),
    }
    if not is_signing_key(secrets[0]):
        headers["X-Dihya-Signature"] = dihya_signature(secrets[0], body)
    return SignedDelivery(job=job, body=body.decode(), headers=headers, signed_at=now,
                          sealed_headers=sealed_headers)


# --- control messages and audit facts -------------------------------------------------------


def describe(exc: ValidationError) -> str:
    """A validation error without the submitted values (a control message holds a secret)."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return "; ".join(parts)


def parse_control(body: bytes) -> EndpointSecret:
    """Decode a control message; raise ``ValueError`` (safe to log) if it is unusable."""
    try:
        msg = EndpointSecret.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None
    if msg.action == "set" and (msg.secret is None or not msg.secret.get_secret_value()):
        raise ValueError("secret: required (non-empty) when action is 'set'")
    if msg.action == "headers" and msg.headers is None:
        raise ValueError("headers: required when action is 'headers'")
    if msg.headers is not None:
        for name, value in msg.headers.items():
            why = custom_headers.refusal(name, value.get_secret_value())
            if why is not None:  # the name is not secret; the value never shown
                raise ValueError(f"headers.{name[:64]}: {why}")
    return msg


def parse_jobs(body: bytes) -> list[DeliveryJob]:
    """Decode a message of ``dihya.signer.jobs``: one job, or ingest's
    :class:`~shared.contracts.DeliveryJobBatch`; raise ``ValueError`` (safe to log) if it is
    unusable — a batch as a whole: it is parked as it came."""
    try:
        return decode_jobs(body)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def secret_fact(msg: EndpointSecret, *, applied: bool, now: datetime) -> AuditFact:
    """``secret.set`` for a control message: the endpoint and what happened, never the secret."""
    return AuditFact(
        id=fact_id(msg.endpoint_id, msg.issued_at.isoformat(), msg.action, "secret.set"),
        kind="secret.set",
        occurred_at=now,
        service="signer",
        endpoint_id=msg.endpoint_id,
        outcome="applied" if applied else "ignored_stale",
        details={
            "action": msg.action,
            "issued_at": iso_z(msg.issued_at),
            "previous_valid_until": (None if msg.previous_valid_until is None
                                     else iso_z(msg.previous_valid_until)),
            # names only: a header's value is a secret
            **({"header_names": sorted(msg.headers)} if msg.headers is not None else {}),
        },
    )


def parked_fact(*, queue: str, reason: str, error: str, body: bytes, now: datetime,
                job: DeliveryJob | None = None) -> AuditFact:
    """``delivery.parked``: a message the signer set aside (with why) instead of processing."""
    if job is not None:
        key = (job.delivery_id, str(job.attempt), "delivery.parked")
    else:
        key = (queue, hashlib.sha256(body).hexdigest(), "delivery.parked")
    return AuditFact(
        id=fact_id(*key),
        kind="delivery.parked",
        occurred_at=now,
        service="signer",
        event_id=None if job is None else job.event.id,
        event_type=None if job is None else job.event.event,
        endpoint_id=None if job is None else job.endpoint_id,
        delivery_id=None if job is None else job.delivery_id,
        attempt=None if job is None else job.attempt,
        reason=reason,
        error=error[:500],
        tenant=None if job is None else job.tenant,
        details={"queue": queue},
    )
