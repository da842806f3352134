"""Custom per-endpoint headers (#22): which names are Dihya's own, and how the values travel.

An endpoint's static headers (an API-gateway key, say) are secrets in all but name, so they get
the webhook secret's treatment: handed to the signer in the one control message allowed to
carry secrets, encrypted in its keystore, never logged or audited. On each attempt the signer
adds them to the delivery *sealed*: ``SignedDelivery.sealed_headers`` is a Fernet token under
``DIHYA_HEADERS_KEY``, which only the signer and the deliverer hold, so the values are not
readable in the broker, in a dead-letter queue or in a parked message; the deliverer opens it
just before the POST.
"""

from __future__ import annotations

import re

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

MAX_HEADERS = 20
MAX_VALUE_LENGTH = 1024
NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an RFC 9110 token
# Dihya's own, the body's framing, and hop-by-hop headers (RFC 9110 §7.6.1)
RESERVED = frozenset({
    "content-type", "content-length", "content-encoding", "host", "user-agent",
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "traceparent",
    "tracestate", "expect",
})
RESERVED_PREFIXES = ("webhook-", "x-dihya-")


class HeadersKeyError(ValueError):
    """``DIHYA_HEADERS_KEY`` is missing or malformed, or a token does not open with it."""


def refusal(name: str, value: str) -> str | None:
    """Why a header may not be set on an endpoint (safe to show: never repeats the value),
    or ``None`` if it may."""
    if not NAME_RE.match(name):
        return "is not a valid header name"
    lower = name.lower()
    if lower in RESERVED or lower.startswith(RESERVED_PREFIXES):
        return "is set by Dihya or by HTTP itself and cannot be overridden"
    if len(value) > MAX_VALUE_LENGTH:
        return f"value is longer than {MAX_VALUE_LENGTH} characters"
    if not all(" " <= ch <= "~" or ch == "\t" for ch in value):
        return "value must be printable ASCII (no line breaks)"
    return None


def is_reserved(name: str) -> bool:
    lower = name.lower()
    return lower in RESERVED or lower.startswith(RESERVED_PREFIXES)


def cipher(raw: str) -> MultiFernet:
    """``DIHYA_HEADERS_KEY``: Fernet keys, comma-separated; the first seals."""
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError:
        raise HeadersKeyError("DIHYA_HEADERS_KEY must hold Fernet keys (comma-separated)"
                              ) from None


def seal(headers: dict[str, str], delivery_id: str, key: MultiFernet) -> str:
    """The token carrying ``headers`` of one delivery (bound to its id: a token copied onto
    another delivery does not open)."""
    return key.encrypt(orjson.dumps({"delivery_id": delivery_id, "headers": headers})).decode()


def unseal(token: str, delivery_id: str, key: MultiFernet) -> dict[str, str]:
    try:
        plain = orjson.loads(key.decrypt(token.encode("ascii")))
    except (InvalidToken, orjson.JSONDecodeError, UnicodeEncodeError):
        raise HeadersKeyError("the delivery's sealed headers do not open with "
                              "DIHYA_HEADERS_KEY") from None
    if plain.get("delivery_id") != delivery_id:
        raise HeadersKeyError("the sealed headers belong to another delivery")
    return {str(k): str(v) for k, v in plain["headers"].items() if not is_reserved(str(k))}
