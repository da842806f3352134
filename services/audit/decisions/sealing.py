"""GDPR in an append-only log: who a record is about, and crypto-shredding of personal fields.

Pure logic (no I/O): the store supplies keys and persists what is decided here.

* **Subject.** The data subject of a fact is the first of the configured JSON paths
  (``DIHYA_AUDIT_SUBJECT_PATHS``, default ``subject,user_id``) that holds a non-empty string in
  the fact's ``details``. Ingest puts the event's ``data.user_id`` in ``details.subject``. A fact
  with no subject of its own but the ``event_id`` of a fact that has one (a delivery attempt of
  that event, say) is about the same subject: it is *linked* to it.
* **Sealing.** A record about a subject never stores its personal fields in clear: ``subject``
  and ``details`` are stored as ``null`` and ``{}``, and their values travel in ``sealed``, an
  AES-256-GCM ciphertext under a key of that subject alone, with the fact id as associated data
  (a sealed value copied onto another record does not open). ``subject_ref`` holds the
  subject's random pseudonym (``sbj_…``), which is how the store finds its records.
* **Erasure.** Deleting the subject's key (and the row that maps the subject to its pseudonym)
  makes every sealed value unreadable at once, while the hash chain — computed over the
  ciphertext — still verifies. Nothing left in the log names the subject: the pseudonym was
  random, and the only link from a subject id to it was that deleted row.

Why ``url`` is not sealed: it is the endpoint the operator registered (the *recipient*, which
Art. 15 asks us to disclose), the same for every subject, and the deliverer already strips
credentials from it; once the subject is erased nothing ties it to them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DEFAULT_SUBJECT_PATHS = "subject,user_id"
PERSONAL_FIELDS: tuple[str, ...] = ("subject", "details")
"""The fields of a record that are sealed when it has a subject."""
ERASED = "[erased]"
"""Shown instead of each personal field once the subject's key is gone."""
UNREADABLE = "[unreadable]"
"""Shown instead of each personal field when the ciphertext does not open (tampering)."""
MAX_SUBJECT_LENGTH = 512
SEAL_VERSION = "v1."
REF_PREFIX = "sbj_"
KEY_BYTES = 32

Path = tuple[str, ...]


class PathError(ValueError):
    """``DIHYA_AUDIT_SUBJECT_PATHS`` is not a comma-separated list of dotted names."""


def parse_paths(text: str) -> tuple[Path, ...]:
    """``"subject,user_id,customer.id"`` → ``(("subject",), ("user_id",), ("customer", "id"))``."""
    paths: list[Path] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = tuple(item.split("."))
        if any(not p.strip() or p != p.strip() for p in parts):
            raise PathError(f"bad subject path {item!r}: dotted names without blanks expected")
        paths.append(parts)
    if not paths:
        raise PathError("at least one subject path is needed")
    return tuple(paths)


DEFAULT_PATHS = parse_paths(DEFAULT_SUBJECT_PATHS)


def valid_subject(value: object) -> bool:
    """A subject id the store can index and the API can be asked about."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT_LENGTH
            and "\x00" not in value)


def subject_of(details: Mapping[str, Any], paths: Sequence[Path] = DEFAULT_PATHS) -> str | None:
    """The first path of ``paths`` that holds a subject id in ``details`` (strings only: a
    number is more often a count than a person)."""
    for path in paths:
        value: Any = details
        for name in path:
            if not isinstance(value, Mapping) or name not in value:
                value = None
                break
            value = value[name]
        if valid_subject(value):
            assert isinstance(value, str)
            return value
    return None


# --------------------------------------------------------------------------- who a fact is about

@dataclass(frozen=True)
class Own:
    """The fact is about ``subject``: it names it itself (``named``), or another fact of the
    same batch and event does."""

    subject: str
    named: bool = True


@dataclass(frozen=True)
class Linked:
    """The fact has no subject of its own but belongs to an event already stored about one."""

    ref: str


class _FactLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def event_id(self) -> str | None: ...
    @property
    def details(self) -> Mapping[str, Any]: ...


def plan(
    facts: Iterable[_FactLike],
    paths: Sequence[Path],
    stored_links: Mapping[str, str],
) -> dict[str, Own | Linked]:
    """Who each fact (by id) is about; facts about nobody are left out.

    ``stored_links`` maps event ids to the pseudonym of the subject their stored records are
    about. Inside the batch, a fact that names a subject makes its event's other facts about
    that subject too — in either order, since services publish an event's facts concurrently
    (a ``delivery.held`` may be queued before its ``event.accepted``).
    """
    facts = list(facts)
    by_event: dict[str, str] = {}
    for fact in facts:
        subject = subject_of(fact.details, paths)
        if subject is not None and fact.event_id and fact.event_id not in by_event:
            by_event[fact.event_id] = subject
    decided: dict[str, Own | Linked] = {}
    for fact in facts:
        subject = subject_of(fact.details, paths)
        if subject is not None:
            decided[fact.id] = Own(subject)
        elif fact.event_id and fact.event_id in by_event:
            decided[fact.id] = Own(by_event[fact.event_id], named=False)
        elif fact.event_id and fact.event_id in stored_links:
            decided[fact.id] = Linked(stored_links[fact.event_id])
    return decided


def links_needed(facts: Iterable[_FactLike], paths: Sequence[Path]) -> set[str]:
    """Event ids whose stored subject :func:`plan` may need (facts without a subject)."""
    return {f.event_id for f in facts if f.event_id and subject_of(f.details, paths) is None}


# --------------------------------------------------------------------------- keys and sealing

@dataclass(frozen=True)
class Sealing:
    """How to seal one record: the subject's pseudonym and key, and the subject id if the fact
    named it (a linked fact only knows the pseudonym)."""

    ref: str
    key: bytes
    subject: str | None


def seals_for(decided: Mapping[str, Own | Linked],
              by_subject: Mapping[str, tuple[str, bytes]],
              by_ref: Mapping[str, bytes]) -> dict[str, Sealing]:
    """How to seal each fact of :func:`plan`, given each subject's (pseudonym, key) and the
    keys still stored for the linked pseudonyms."""
    seals: dict[str, Sealing] = {}
    for fact_id, who in decided.items():
        if isinstance(who, Own):
            ref, key = by_subject[who.subject]
            seals[fact_id] = Sealing(ref, key, who.subject if who.named else None)
        else:
            # The event's subject was erased: seal with a key that is never stored, so what
            # arrives late about them is unreadable from the start.
            seals[fact_id] = Sealing(who.ref, by_ref.get(who.ref) or new_key(), None)
    return seals


def new_ref() -> str:
    """A subject pseudonym: random, so nothing derives it from the subject id."""
    return REF_PREFIX + secrets.token_hex(16)


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def keys_to_create(lookups: Mapping[str, str], found: Mapping[str, tuple[str, bytes]]
                   ) -> dict[str, tuple[str, str, bytes]]:
    """A new pseudonym and key for each subject of ``lookups`` (blind index → subject) that
    ``found`` (subject → stored pseudonym and key) lacks: subject → (ref, lookup, key)."""
    return {subject: (new_ref(), lookup, new_key())
            for lookup, subject in lookups.items() if subject not in found}


def lookup_hash(index_key: bytes, subject: str) -> str:
    """Blind index of a subject id: HMAC-SHA256 under the service's subject key, so the key
    table holds no subject id in clear, and without that key no one can test a guess."""
    return hmac.new(index_key, subject.encode("utf-8"), hashlib.sha256).hexdigest()


def seal(key: bytes, fact_id: str, personal: Mapping[str, Any]) -> str:
    """``v1.`` + base64url(nonce ‖ AES-256-GCM(personal as JSON, aad = fact id))."""
    nonce = os.urandom(12)
    plain = orjson.dumps(dict(personal), option=orjson.OPT_SORT_KEYS)
    sealed = AESGCM(key).encrypt(nonce, plain, fact_id.encode("utf-8"))
    return SEAL_VERSION + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")


class SealError(ValueError):
    """The sealed value does not open with this key for this fact (tampered, or foreign)."""


def unseal(key: bytes, fact_id: str, token: str) -> dict[str, Any]:
    if not token.startswith(SEAL_VERSION):
        raise SealError("unknown seal version")
    raw_text = token[len(SEAL_VERSION):]
    try:
        raw = base64.urlsafe_b64decode(raw_text + "=" * (-len(raw_text) % 4))
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], fact_id.encode("utf-8"))
        value = orjson.loads(plain)
    except (binascii.Error, ValueError, InvalidTag, orjson.JSONDecodeError):
        raise SealError("sealed value does not open") from None
    if not isinstance(value, dict):
        raise SealError("sealed value is not an object")
    return value


def seal_record(record: dict[str, Any], sealing: Sealing) -> None:
    """Move ``record``'s personal fields into ``sealed`` (in place), before it is chained."""
    personal = {"subject": sealing.subject, "details": record["details"]}
    record["subject"] = None
    record["details"] = {}
    record["subject_ref"] = sealing.ref
    record["sealed"] = seal(sealing.key, record["id"], personal)


def personal_view(record: Mapping[str, Any], key: bytes | None) -> dict[str, Any] | None:
    """What the API shows as ``personal``: the opened fields, ``[erased]`` once the key is gone,
    ``None`` for a record that has nothing sealed."""
    sealed = record.get("sealed")
    if sealed is None:
        return None
    if key is None:
        return dict.fromkeys(PERSONAL_FIELDS, ERASED)
    try:
        opened = unseal(key, record["id"], sealed)
    except SealError:
        return dict.fromkeys(PERSONAL_FIELDS, UNREADABLE)
    return {name: opened.get(name) for name in PERSONAL_FIELDS}


def decode_key(text: str, what: str) -> bytes:
    """A 32-byte key given as (standard or URL-safe) base64, padded or not."""
    cleaned = text.strip()
    try:
        raw = base64.b64decode(cleaned.replace("-", "+").replace("_", "/")
                               + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} must be base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{what} must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
