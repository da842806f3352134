"""Pure decision logic of the audit service: no I/O, so every rule here is unit-tested alone.

* decoding AuditFact / TokenGrant messages, and refusing what the store could not keep exactly;
* the record a fact becomes, its canonical JSON and the hash chain over records;
* chain verification (first bad record, and why);
* the query language of ``GET /v1/audit/records``: filters, limit and the opaque cursor;
* which token grant wins when grants arrive out of order.

Canonical form (what an external auditor needs to re-verify an export): a record is the JSON
object the API returns minus ``hash`` and ``prev_hash``; its canonical JSON has sorted keys, no
whitespace (orjson), datetimes as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC; and
``hash = sha256_hex(prev_hash_ascii + canonical_json)``, with ``prev_hash`` of the first record
equal to :data:`GENESIS_HASH`. ``seq`` is part of the hashed fields, so a record is bound to its
position. A record about a data subject has three more keys (see
:mod:`services.audit.decisions.sealing`): ``subject_ref`` and ``sealed`` (the ciphertext), which are
hashed, and ``personal`` (their opened view), which is not; so the hashed object is always the
API's minus ``hash``, ``prev_hash`` and ``personal``, and records without a subject hash exactly
as they did before sealing existed. After a retention purge the chain starts from a
signed checkpoint instead of the genesis hash (:mod:`services.audit.checkpoints`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, get_args

import orjson
from pydantic import ValidationError

from services.audit.decisions import sealing
from services.audit.decisions.sealing import DEFAULT_PATHS, Sealing
from shared import contracts
from shared.contracts import AuditFact, Contract, FactKind, TokenGrant

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of the chain."""

FACT_KINDS: tuple[str, ...] = get_args(FactKind)
LOCAL_KINDS: tuple[str, ...] = ("subject.erased", "retention.purged")
"""Kinds of the records the audit service writes about its own acts (no service publishes
them, so they are not FactKinds)."""
STARTED_KIND = "delivery.started"
"""The write-ahead of one POST: held aside (services/audit/started.py), never a record."""
RECORD_KINDS: tuple[str, ...] = (*(k for k in FACT_KINDS if k != STARTED_KIND), *LOCAL_KINDS)

RECORD_FIELDS: tuple[str, ...] = (
    "seq", "id", "kind", "occurred_at", "recorded_at", "service", "actor", "event_id",
    "event_type", "endpoint_id", "delivery_id", "attempt", "url", "outcome", "status_code",
    "duration_ms", "error", "reason", "subject", "details",
)
"""The hashed fields of a record, as the API names them (``id`` is the fact id)."""

SEALED_FIELDS: tuple[str, ...] = ("subject_ref", "sealed", "tenant")
"""Hashed too, but only when not null: a record about a data subject (see sealing), or of a
tenant (``tenant``, #21) — so the records written before either existed verify unchanged."""

VIEW_FIELDS: tuple[str, ...] = ("personal",)
"""Shown by the API, never hashed: the opened personal fields of a sealed record."""

FACT_COLUMNS: tuple[str, ...] = (
    "actor", "event_id", "event_type", "endpoint_id", "delivery_id", "attempt", "url",
    "outcome", "status_code", "duration_ms", "error", "reason",
)
"""Optional AuditFact fields copied verbatim into a record."""

Record = dict[str, Any]
"""A record with Python values (aware UTC datetimes); ``prev_hash``/``hash`` once chained."""

_INT64 = 2**63


# --------------------------------------------------------------------------- decoding

@dataclass(frozen=True)
class Rejected:
    """Why a message cannot be processed; it is parked with ``reason`` in ``x-dihya-reason``."""

    reason: Literal["invalid_json", "schema_invalid"]
    error: str


C = TypeVar("C", bound=Contract)


def decode(body: bytes, model: type[C]) -> C | Rejected:
    """Parse ``body`` as ``model``; name the problem without echoing submitted values."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", f"body is not valid JSON: {exc}")
    return _validate(data, model)


def _validate(data: Any, model: type[C]) -> C | Rejected:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return Rejected("schema_invalid", _problems(exc))


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )


def decode_fact(body: bytes) -> AuditFact | Rejected:
    """An :class:`AuditFact` the store can keep exactly, or why not.

    Beyond the contract, a fact must survive the round trip through SQLite *and* PostgreSQL
    unchanged, or its hash would not verify after reading it back (and a row PostgreSQL
    refuses would fail the whole batch again and again): no NUL character (PostgreSQL text
    cannot hold one), finite numbers, integers within 64 bits, a date that exists in UTC.
    """
    fact = decode(body, AuditFact)
    if isinstance(fact, Rejected):
        return fact
    problem = storable_problem(fact)
    return Rejected("schema_invalid", problem) if problem else fact


def decode_facts(body: bytes) -> list[AuditFact] | Rejected:
    """The facts of one message (:func:`shared.contracts.decode_facts`: an
    :class:`AuditFactBatch` or a single :class:`AuditFact`), or why the message is neither.

    Each fact must still pass :func:`storable_problem` before it is stored: one unstorable fact
    (a receiver's reply with a NUL in its excerpt, say) must not cost its batch neighbours
    their records, so that check is the caller's, fact by fact.
    """
    try:
        return contracts.decode_facts(body)
    except ValidationError as exc:
        return Rejected("schema_invalid", _problems(exc))
    except ValueError as exc:  # not JSON at all
        return Rejected("invalid_json", f"body is {exc}")


def storable_problem(fact: AuditFact) -> str | None:
    """``None`` if ``fact`` round-trips through the store exactly, else what prevents it."""
    try:
        fact.occurred_at.astimezone(UTC)
    except OverflowError:
        return "occurred_at: out of range once converted to UTC"
    for name in ("attempt", "status_code"):
        value = getattr(fact, name)
        if value is not None and not -_INT64 <= value < _INT64:
            return f"{name}: out of the 64-bit integer range"
    if fact.duration_ms is not None and not math.isfinite(fact.duration_ms):
        return "duration_ms: must be a finite number"
    fields = fact.model_dump(mode="python", exclude={"occurred_at"})
    if not _plain_text(fields):
        for path, text in _strings(fields):
            if "\x00" in text:
                return f"{path}: NUL characters are not allowed"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path}: not valid Unicode (lone surrogate)"
    try:
        if orjson.loads(orjson.dumps(fact.details)) != fact.details:
            return "details: numbers must be finite"
    except orjson.JSONEncodeError as exc:
        return f"details: {exc}"
    return None


def _plain_text(fields: Mapping[str, Any]) -> bool:
    """True if no string in ``fields`` holds a NUL or a lone surrogate, by one serialisation
    (orjson refuses a surrogate and writes NUL as ``\\u0000``). False means "look closer":
    :func:`_strings` then finds which string, if any (a literal backslash-u0000 is fine)."""
    try:
        return b"\\u0000" not in orjson.dumps(fields)
    except orjson.JSONEncodeError:
        return False


def _strings(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    """Every string (keys included) inside ``value``, with a dotted path for error messages."""
    if isinstance(value, str):
        yield path or "(value)", value
    elif isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield sub, key
            yield from _strings(item, sub)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


# --------------------------------------------------------------------------- records, chain

def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime) -> str:
    """The one datetime spelling of records: ``2025-05-20T12:00:00.000000Z`` (fixed width)."""
    return utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def subject_of(details: Mapping[str, Any],
               paths: tuple[sealing.Path, ...] = DEFAULT_PATHS) -> str | None:
    """The data subject a fact is about (GDPR export key): see :func:`sealing.subject_of`."""
    return sealing.subject_of(details, paths)


@dataclass(frozen=True)
class LocalFact:
    """A fact the audit service records about its own acts (an erasure, a purge): written
    straight to the store in the transaction that does the act, never through the broker."""

    id: str
    kind: str
    occurred_at: datetime
    service: str = "audit"
    actor: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    endpoint_id: str | None = None
    delivery_id: str | None = None
    attempt: int | None = None
    url: str | None = None
    outcome: str | None = None
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


AnyFact = AuditFact | LocalFact


def new_record(fact: AnyFact, seq: int, recorded_at: datetime,
               paths: tuple[sealing.Path, ...] = DEFAULT_PATHS) -> Record:
    """The (unchained, unsealed) record ``fact`` becomes at position ``seq``."""
    record: Record = {
        "seq": seq,
        "id": fact.id,
        "kind": fact.kind,
        "occurred_at": utc(fact.occurred_at),
        "recorded_at": utc(recorded_at),
        "service": fact.service,
        "subject": subject_of(fact.details, paths),
        "details": dict(fact.details),
        "subject_ref": None,
        "sealed": None,
        "tenant": getattr(fact, "tenant", None),
    }
    for name in FACT_COLUMNS:
        record[name] = getattr(fact, name)
    return record


_OPTIONAL_FIELDS = frozenset((*SEALED_FIELDS, *VIEW_FIELDS))


def to_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """The API (and hashing) form of a record: datetimes as :func:`iso` strings, and
    ``subject_ref`` / ``sealed`` / ``personal`` only on a record about a data subject — so
    "the object minus ``hash``, ``prev_hash`` and ``personal``" is exactly what was hashed."""
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in record.items()
            if v is not None or k not in _OPTIONAL_FIELDS}


def canonical(record: Mapping[str, Any]) -> bytes:
    """Canonical JSON of the hashed fields: sorted keys, no whitespace, fixed datetimes."""
    fields = {name: record[name] for name in RECORD_FIELDS}
    fields.update((name, record.get(name)) for name in SEALED_FIELDS)
    return orjson.dumps(to_json(fields), option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON)`` as lowercase hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(record)).hexdigest()


@dataclass(frozen=True)
class Appended:
    """What a batch write decides: the new chained records and how many duplicates it skipped."""

    records: list[Record]
    duplicates: int


def fresh_facts(facts: Iterable[AnyFact], existing_ids: set[str]) -> list[AnyFact]:
    """``facts`` minus known ids and repeats: the ones :func:`append` will record."""
    seen = set(existing_ids)
    fresh = []
    for fact in facts:
        if fact.id not in seen:
            seen.add(fact.id)
            fresh.append(fact)
    return fresh


AttemptKey = tuple[str, int]
"""``(delivery_id, attempt)``: which attempt of which delivery a ``delivery.attempted`` is."""

REPEAT_KEY = "repeat"
"""``details`` key set to true on the record of a POST that repeated an attempt already
recorded (the deliverer's job redelivered after its POST): every POST has its own record."""


def attempt_key(fact: AnyFact) -> AttemptKey | None:
    """The attempt a ``delivery.attempted`` fact reports; None for any other fact."""
    if fact.kind != "delivery.attempted" or fact.delivery_id is None or fact.attempt is None:
        return None
    return fact.delivery_id, fact.attempt


UNKNOWN_OUTCOME = "unknown"
UNKNOWN_REASON = "deliverer_stopped"


def outcome_unknown(started: AuditFact) -> AuditFact:
    """The ``delivery.attempted`` audit records for a POST whose outcome never came.

    ``started`` is the deliverer's ``delivery.started``, confirmed before its POST left; no
    outcome within the timeout means the deliverer stopped (killed) in between. The record
    keeps the started fact's id — the id the outcome would have had — so an outcome that
    still arrives later is a duplicate of it, never a second record of the same POST; and its
    time is when the POST started. Whether the receiver got the POST is unknown, hence the
    outcome: a deliverer killed in the millisecond between the confirm and sending the POST
    leaves a record for a POST nobody received."""
    return started.model_copy(update={
        "kind": "delivery.attempted",
        "service": "audit",
        "outcome": UNKNOWN_OUTCOME,
        "reason": UNKNOWN_REASON,
        "error": "outcome unknown: the deliverer stopped after starting this POST and before "
                 "reporting its outcome (the receiver may or may not have received it)",
        "details": {**started.details, "next": "unknown", "outcome_unknown": True},
    })


def budget_of(routing_key: str | None) -> Literal["delivery", "other"]:
    """Which of audit's two byte budgets (:mod:`services.audit.budget`) a fact message routed
    with ``routing_key`` (its facts' kind) counts against: delivery facts, which may wait for
    their event's acceptance, have one; everything else (acceptances among them) the other, so
    the facts that wait can never hold back the ones they wait for."""
    if routing_key is not None and routing_key.startswith("delivery."):
        return "delivery"
    return "other"


def split_started(facts: Iterable[AuditFact]) -> tuple[list[AuditFact], list[AuditFact]]:
    """``facts`` as (write-aheads to hold aside, facts to record)."""
    started: list[AuditFact] = []
    others: list[AuditFact] = []
    for fact in facts:
        (started if fact.kind == STARTED_KIND else others).append(fact)
    return started, others


def append(
    facts: Iterable[AnyFact],
    *,
    existing_ids: set[str],
    head_seq: int,
    head_hash: str,
    recorded_at: datetime,
    seals: Mapping[str, Sealing] | None = None,
    paths: tuple[sealing.Path, ...] = DEFAULT_PATHS,
    attempts_recorded: set[AttemptKey] | frozenset[AttemptKey] = frozenset(),
) -> Appended:
    """Chain ``facts`` after the head ``(head_seq, head_hash)``, skipping known fact ids.

    Only facts that will be inserted are chained, so a redelivered duplicate never leaves a
    hole in the chain. ``seq`` values follow the head without gaps: the writer assigns them
    (instead of the database sequence) so that seq order and chain order are one and the same.
    A fact whose id is in ``seals`` has its personal fields sealed before it is hashed.

    Two ideas of "the same": a fact id already stored is a redelivered *fact* (skipped: one
    record); a ``delivery.attempted`` with a new id for an attempt already recorded
    (``attempts_recorded``, or earlier in ``facts``) is another *POST* of that attempt — the
    deliverer's job was redelivered after it had posted — and is recorded too, with
    ``details["repeat"] = true``.
    """
    seals = seals or {}
    seen = set(existing_ids)
    attempts = set(attempts_recorded)
    records: list[Record] = []
    duplicates = 0
    seq, prev = head_seq, head_hash
    for fact in facts:
        if fact.id in seen:
            duplicates += 1
            continue
        seen.add(fact.id)
        seq += 1
        record = new_record(fact, seq, recorded_at, paths)
        key = attempt_key(fact)
        if key is not None:
            if key in attempts:
                record["details"][REPEAT_KEY] = True
            attempts.add(key)
        if fact.id in seals:
            sealing.seal_record(record, seals[fact.id])
        record["prev_hash"] = prev
        record["hash"] = prev = chain_hash(prev, record)
        records.append(record)
    return Appended(records, duplicates)


Problem = Literal["broken_link", "hash_mismatch", "unreadable", "bad_checkpoint"]

PROBLEMS: dict[str, str] = {
    "broken_link": "prev_hash differs from the hash of the record before it: a record was "
                   "deleted, inserted or reordered just before this one.",
    "hash_mismatch": "the record's content does not match its hash: it was modified.",
    "unreadable": "the stored row cannot be read back as a record: it was modified.",
    "bad_checkpoint": "the retention checkpoint the chain starts from is not signed by this "
                      "service's checkpoint key: it was forged or modified (first_bad_seq is "
                      "its last_seq).",
    "signed_head_mismatch": "the chain is consistent but no longer holds the newest signed "
                            "head (first_bad_seq is its seq): records were deleted from its "
                            "end, or rewritten with every later hash recomputed.",
}


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    records: int
    first_bad_seq: int | None
    problem: Problem | None
    head_hash: str
    checkpoint: Mapping[str, Any] | None = None
    """The retention checkpoint the walk started from (its JSON form and public key)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "detail": PROBLEMS[self.problem] if self.problem else None,
            "head_hash": self.head_hash,
            "checkpoint": dict(self.checkpoint) if self.checkpoint is not None else None,
        }


@dataclass
class ChainVerifier:
    """Walks records in ``seq`` order (fed page by page) and remembers the first bad one.

    Truncation (deleting the newest records) leaves a valid, shorter chain: compare
    ``head_hash`` with a value noted earlier (or anchored elsewhere) to detect it. After a
    retention purge, ``start_hash`` is the checkpoint's ``last_hash``.
    """

    start_hash: str = GENESIS_HASH
    records: int = 0
    first_bad_seq: int | None = None
    problem: Problem | None = None
    checkpoint: Mapping[str, Any] | None = None
    _prev: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self._prev = self.start_hash

    def feed(self, record: Mapping[str, Any]) -> None:
        self.records += 1
        if self.first_bad_seq is None:
            if record["prev_hash"] != self._prev:
                self._bad(record["seq"], "broken_link")
            else:
                try:
                    intact = chain_hash(record["prev_hash"], record) == record["hash"]
                except (TypeError, ValueError):  # a value no record can hold: tampered
                    self._bad(record["seq"], "unreadable")
                else:
                    if not intact:
                        self._bad(record["seq"], "hash_mismatch")
        self._prev = record["hash"]

    def feed_unreadable(self, seq: int, stored_hash: str) -> None:
        self.records += 1
        if self.first_bad_seq is None:
            self._bad(seq, "unreadable")
        self._prev = stored_hash

    def bad_checkpoint(self, last_seq: int) -> None:
        """The checkpoint the walk starts from does not verify: it comes first, so it wins."""
        self._bad(last_seq, "bad_checkpoint")

    def _bad(self, seq: int, problem: Problem) -> None:
        self.first_bad_seq, self.problem = seq, problem

    def report(self) -> ChainReport:
        return ChainReport(
            ok=self.first_bad_seq is None,
            records=self.records,
            first_bad_seq=self.first_bad_seq,
            problem=self.problem,
            head_hash=self._prev,
            checkpoint=self.checkpoint,
        )


def verify_chain(records: Iterable[Mapping[str, Any]],
                 start_hash: str = GENESIS_HASH) -> ChainReport:
    """Verify a whole chain given in ``seq`` order (from a checkpoint's hash if purged)."""
    verifier = ChainVerifier(start_hash)
    for record in records:
        verifier.feed(record)
    return verifier.report()


def record_from_row(row: Mapping[Any, Any]) -> Record:
    """A stored row (raw column values, ``fact_id`` column) as a record; ValueError if garbled.

    Datetimes may come back as ``datetime`` (PostgreSQL) or text (SQLite) and ``details`` as
    JSON text: both are parsed here, so a row tampered into an unparsable state is reported
    by verification instead of crashing it.
    """
    record: Record = {name: row["fact_id" if name == "id" else name] for name in RECORD_FIELDS}
    for name in SEALED_FIELDS:
        record[name] = row[name]
    record["prev_hash"] = row["prev_hash"]
    record["hash"] = row["hash"]
    for name in ("occurred_at", "recorded_at"):
        value = record[name]
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise ValueError(f"{name} is not a datetime")
        record[name] = utc(value)
    details = record["details"]
    if isinstance(details, str | bytes):
        try:
            details = orjson.loads(details)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"details is not JSON: {exc}") from None
    if not isinstance(details, dict):
        raise ValueError("details is not a JSON object")
    record["details"] = details
    return record


# --------------------------------------------------------------------------- queries

FILTER_PARAMS: tuple[str, ...] = (
    "event_id", "event_type", "endpoint_id", "delivery_id", "kind", "outcome", "subject",
    "tenant",
)
QUERY_PARAMS: tuple[str, ...] = (*FILTER_PARAMS, "since", "until", "limit", "cursor", "order")
DEFAULT_LIMIT = 100
MAX_FILTER_LENGTH = 512

_CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class QueryError(ValueError):
    """Bad query parameters; ``fields`` names each one (the 422 body)."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{f['field']}: {f['message']}" for f in fields))
        self.fields = fields


@dataclass(frozen=True)
class RecordQuery:
    """A validated ``GET /v1/audit/records`` query: exact-match filters, time range, page."""

    filters: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    """Inclusive lower bound on ``occurred_at``."""
    until: datetime | None = None
    """Exclusive upper bound on ``occurred_at``."""
    limit: int = DEFAULT_LIMIT
    after_seq: int = 0
    """The cursor: records after this seq (oldest first) or before it (newest first); 0 is
    the start either way."""
    newest_first: bool = False


TENANT_ROLES: tuple[contracts.Role, ...] = ("tenant_admin", "tenant_viewer")
"""Roles whose tokens read their own tenant's records only."""


def confine(query: RecordQuery, role: contracts.Role, tenant: str | None
            ) -> RecordQuery | None:
    """The query a caller may run: a platform role's unchanged; a tenant role's narrowed to
    its own tenant (``tenant`` filter forced). ``None`` when a tenant token asks for another
    tenant's records, or its tenant is unknown here (a grant from before audit_0006): the
    caller answers as for a tenant that does not exist."""
    if role not in TENANT_ROLES:
        return query
    if tenant is None or query.filters.get("tenant", tenant) != tenant:
        return None
    return replace(query, filters={**query.filters, "tenant": tenant})


def sees_head(role: contracts.Role) -> bool:
    """Whether an export for ``role`` carries the log's head seq. The head numbers every
    record of the platform, so a tenant token would learn from it how many records all the
    tenants together hold (and, asked twice, how fast they grow): platform roles only."""
    return role not in TENANT_ROLES


def encode_cursor(seq: int) -> str:
    """Opaque cursor for "records after ``seq``": unpadded URL-safe base64 of the number."""
    return base64.urlsafe_b64encode(str(seq).encode("ascii")).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> int:
    """The ``seq`` a cursor stands for; ValueError if it is not one this service issued."""
    if not _CURSOR_RE.match(cursor):
        raise ValueError("not a cursor returned by this API")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not a cursor returned by this API") from None
    if not re.fullmatch(rb"0|[1-9][0-9]{0,18}", raw) or int(raw) >= _INT64:
        raise ValueError("not a cursor returned by this API")
    if encode_cursor(int(raw)) != cursor:  # one spelling per cursor: no aliasing tricks
        raise ValueError("not a cursor returned by this API")
    return int(raw)


def parse_datetime(value: str) -> datetime:
    """ISO-8601 date or datetime; without an offset it is taken as UTC."""
    try:
        return utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        raise ValueError("must be an ISO-8601 datetime, e.g. 2025-05-20T12:00:00Z") from None


def parse_query(pairs: Iterable[tuple[str, str]], page_limit: int) -> RecordQuery:
    """Validate query-string pairs (repeats included); raise :class:`QueryError` naming each bad
    parameter. Unknown parameters are refused rather than ignored: a misspelt filter on an audit
    export would otherwise silently return everything."""
    problems: list[dict[str, str]] = []
    values: dict[str, str] = {}

    def bad(name: str, message: str) -> None:
        problems.append({"field": name, "message": message})

    for name, value in pairs:
        if name not in QUERY_PARAMS:
            bad(name, f"unknown parameter; expected one of: {', '.join(QUERY_PARAMS)}")
        elif name in values:
            bad(name, "given more than once")
        elif not value:
            bad(name, "must not be empty")
        elif len(value) > MAX_FILTER_LENGTH:
            bad(name, f"longer than {MAX_FILTER_LENGTH} characters")
        elif "\x00" in value or not encodable(value):
            bad(name, "contains characters that cannot be stored")
        else:
            values[name] = value

    filters = {k: v for k, v in values.items() if k in FILTER_PARAMS}
    if "kind" in filters and filters["kind"] not in RECORD_KINDS:
        bad("kind", f"unknown record kind; expected one of: {', '.join(RECORD_KINDS)}")

    bounds: dict[str, datetime] = {}
    for name in ("since", "until"):
        if name in values:
            try:
                bounds[name] = parse_datetime(values[name])
            except ValueError as exc:
                bad(name, str(exc))
    if "since" in bounds and "until" in bounds and bounds["since"] > bounds["until"]:
        bad("until", "must not be before since")

    limit = min(DEFAULT_LIMIT, page_limit)
    if "limit" in values:
        raw = values["limit"]
        if not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= page_limit:
            bad("limit", f"must be an integer from 1 to {page_limit}")
        else:
            limit = int(raw)

    after_seq = 0
    if "cursor" in values:
        try:
            after_seq = decode_cursor(values["cursor"])
        except ValueError as exc:
            bad("cursor", str(exc))

    order = values.get("order", "asc")
    if order not in ("asc", "desc"):
        bad("order", "must be asc (oldest first, the default) or desc (newest first)")

    if problems:
        raise QueryError(problems)
    return RecordQuery(filters, bounds.get("since"), bounds.get("until"), limit, after_seq,
                       newest_first=order == "desc")


def encodable(value: str) -> bool:
    """Whether ``value`` can be stored as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- tokens

@dataclass(frozen=True)
class StoredToken:
    token_id: str
    role: str
    token_hash: str
    revoked: bool
    issued_at: datetime


def grant_applies(existing: StoredToken | None, grant: TokenGrant) -> bool:
    """Whether ``grant`` should overwrite the replica's row for its token.

    Grants can arrive out of order (a requeued message is redelivered later), so: revocation is
    final (a late "created" never revives a revoked token), and otherwise the newest
    ``issued_at`` wins.
    """
    if existing is None:
        return True
    if existing.revoked and not grant.revoked:
        return False
    return utc(grant.issued_at) >= utc(existing.issued_at)
