"""The event-type catalog: what each known event type means, and its ``details`` in four
languages.

The guide's payload carries ``data.details`` in French, English, Arabic and Tamazight, but a
publisher often knows one language only. For every event type it lists, the catalog holds a
description and a ``details`` template per language, filled from the event's own ``data``
(``"Template {template_id} created by {user_id}."``). :func:`complete_details` adds the
languages the publisher left out; what the publisher wrote always wins and is never rewritten.

Rules of completion, all pure (no I/O here but :func:`load_catalog` reading one file):

* ``details`` absent or ``null`` → every language the catalog can render is added;
* ``details`` an object → only its missing languages (absent or ``null``) are added; every
  text the publisher set, and keys of other languages, are kept as they are;
* ``details`` a string → it is the text in the event's ``lang`` (``{lang: text}``) and the other
  languages are added; without ``lang`` nobody can tell its language, so it is left alone;
* ``details`` anything else (a list, a number) → left alone: the publisher meant something else;
* a language whose template names a ``data`` key that is missing, not a string or number, or
  longer than :data:`MAX_VALUE` characters is not added (a partial text would mislead).

Templates are checked when the catalog is loaded: only ``{name}`` with ``name`` a plain
identifier — no attribute or index access (``{0.__class__}``, ``{x[0]}``), no positional
field, no conversion (``!r``) and no format spec (``{x:>999999}``) — and every language of a
type takes the same placeholders. Rendering looks up top-level ``data`` keys and concatenates
strings; it never calls :meth:`str.format`, so a template cannot reach anything but ``data``.

The platform's own event types (:data:`INTERNAL_TYPES`) are always known: an operator's
catalog that leaves them out gets the bundled entries for them.

Tamazight is written in Latin script by default, as the guide writes it ("Yettwarna template
amaynut"); a deployment may choose Tifinagh (``DIHYA_TZM_SCRIPT=tifinagh``). A catalog file
gives each type's ``tzm`` texts in Latin, and may give their Tifinagh form under ``tifinagh``
(``{"template.created": {"description": "…", "details": "…"}}``, same placeholders); a type
without one keeps its Latin text. The script only chooses the catalog's texts: a ``tzm`` text a
publisher wrote is delivered as written, in whichever script.

A catalog says which languages' texts still await a native speaker's review:
``"awaiting_native_review": ["ar", "tzm"]`` at the top of the file covers every type (``tzm``
covers both scripts), and a type may say otherwise with its own list. ``GET /v1/event-types``,
the console and the CLI show it beside those texts.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from shared.contracts import Event, EventType, Lang

LANGS: tuple[Lang, ...] = get_args(Lang)
"""The four languages, in the contract's order (fr, en, ar, tzm)."""
INTERNAL_TYPES: tuple[str, ...] = ("endpoint.disabled", "endpoint.failing",
                                   "endpoint.recovered", "delivery.exhausted", "dihya.test")
"""Types the platform emits itself (endpoint health, given-up deliveries — the operational
events; ``dihya endpoints test``)."""
BUNDLED = "event_types.json"
"""The catalog shipped with ingest (package data of :mod:`services.ingest`)."""
MAX_VALUE = 1024
"""Longest ``data`` value a template inserts: the text is repeated in up to four languages."""
MAX_TEXT = 2000
"""Longest description or template, per language."""

UnknownPolicy = Literal["accept", "refuse"]
TzmScript = Literal["latin", "tifinagh"]
"""The script of the catalog's Tamazight texts (``DIHYA_TZM_SCRIPT``)."""


class CatalogError(Exception):
    """The catalog file cannot be read or is not a valid catalog (the message says where)."""


@dataclass(frozen=True)
class Template:
    """A parsed ``details`` template: literal text and the ``data`` keys between it."""

    parts: tuple[tuple[str, str | None], ...]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, data: Mapping[str, JsonValue]) -> str | None:
        """The text with each ``{name}`` replaced by ``data[name]``; ``None`` when a value is
        missing or unfit (not a string or number, or longer than :data:`MAX_VALUE`)."""
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is None:
                continue
            value = _text(data.get(name))
            if value is None:
                return None
            out.append(value)
        return "".join(out)


def _text(value: JsonValue | None) -> str | None:
    if isinstance(value, bool):  # True/False would read as English words in every language
        return None
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str) and len(value) <= MAX_VALUE:
        return value
    return None


def parse_template(text: str) -> Template:
    """Parse a template, refusing anything but literal text and ``{identifier}`` fields.

    Raises ``ValueError`` naming the offending field.
    """
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone "{" or "}"
        raise ValueError(f"malformed template ({exc}); write {{{{ and }}}} for braces") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None))
            continue
        if not name.isidentifier():
            raise ValueError(f"field {{{name}}} is not allowed: use {{name}} with a plain "
                             "data key (no attribute, index or position)")
        if conversion is not None or spec:
            raise ValueError(f"field {{{name}}} is not allowed: no conversion (!r) or format "
                             "spec (:…)")
        parts.append((literal, name))
    return Template(tuple(parts))


def once_each(langs: tuple[Lang, ...]) -> tuple[Lang, ...]:
    """``langs`` if no language is listed twice (a catalog's ``awaiting_native_review``)."""
    if len(set(langs)) != len(langs):
        raise ValueError("each language at most once")
    return langs


class Texts(BaseModel):
    """One text per language; all four are required."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fr: str = Field(min_length=1, max_length=MAX_TEXT)
    en: str = Field(min_length=1, max_length=MAX_TEXT)
    ar: str = Field(min_length=1, max_length=MAX_TEXT)
    tzm: str = Field(min_length=1, max_length=MAX_TEXT)

    def of(self, lang: Lang) -> str:
        return str(getattr(self, lang))


class EventTypeSpec(BaseModel):
    """A catalog entry: what the type means, and its ``details`` templates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: Texts
    details: Texts
    awaiting_native_review: tuple[Lang, ...] | None = None
    """Languages whose texts await a native speaker's review; None: as the file says."""

    @field_validator("awaiting_native_review")
    @classmethod
    def _once_each(cls, value: tuple[Lang, ...] | None) -> tuple[Lang, ...] | None:
        return None if value is None else once_each(value)

    @property
    def unreviewed(self) -> tuple[Lang, ...]:
        """The languages awaiting review, in the contract's order."""
        pending = self.awaiting_native_review or ()
        return tuple(lang for lang in LANGS if lang in pending)

    @field_validator("details")
    @classmethod
    def _safe_templates(cls, value: Texts) -> Texts:
        fields: dict[str, frozenset[str]] = {}
        for lang in LANGS:
            try:
                fields[lang] = parse_template(value.of(lang)).fields
            except ValueError as exc:
                raise ValueError(f"{lang}: {exc}") from None
        if len(set(fields.values())) > 1:
            named = ", ".join(f"{lang}: {sorted(f)}" for lang, f in fields.items())
            raise ValueError(f"every language must take the same placeholders ({named})")
        return value

    @property
    def placeholders(self) -> list[str]:
        return sorted(parse_template(self.details.en).fields)

    def template(self, lang: Lang) -> Template:
        return parse_template(self.details.of(lang))


class TifinaghTexts(BaseModel):
    """A type's ``tzm`` description and ``details`` template in Tifinagh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field(min_length=1, max_length=MAX_TEXT)
    details: str = Field(min_length=1, max_length=MAX_TEXT)


class CatalogFile(BaseModel):
    """The file format: ``{"version": 1, "awaiting_native_review": ["ar", "tzm"],
    "event_types": {"template.created": {...}}, "tifinagh": {"template.created": {...}}}``
    (``awaiting_native_review`` and ``tifinagh`` optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    awaiting_native_review: tuple[Lang, ...] = ()
    event_types: dict[EventType, EventTypeSpec]
    tifinagh: dict[EventType, TifinaghTexts] = Field(default_factory=dict)

    @field_validator("awaiting_native_review")
    @classmethod
    def _once_each(cls, value: tuple[Lang, ...]) -> tuple[Lang, ...]:
        return once_each(value)

    def in_latin(self) -> dict[str, EventTypeSpec]:
        """The types as written, each with its languages awaiting review settled."""
        return {name: self._settled(spec) for name, spec in self.event_types.items()}

    def _settled(self, spec: EventTypeSpec) -> EventTypeSpec:
        if spec.awaiting_native_review is not None:
            return spec
        return spec.model_copy(update={"awaiting_native_review": self.awaiting_native_review})

    def in_tifinagh(self) -> dict[str, EventTypeSpec]:
        """The types with their ``tzm`` texts in Tifinagh where the file gives them (checked
        like any template: a bad one is refused whichever script is chosen)."""
        unknown = sorted(set(self.tifinagh) - set(self.event_types))
        if unknown:
            raise ValueError(f"tifinagh: types not in event_types: {', '.join(unknown)}")
        out: dict[str, EventTypeSpec] = {}
        for name, spec in self.in_latin().items():
            tfng = self.tifinagh.get(name)
            if tfng is None:
                out[name] = spec
                continue
            try:
                out[name] = EventTypeSpec.model_validate({
                    "description": {**spec.description.model_dump(), "tzm": tfng.description},
                    "details": {**spec.details.model_dump(), "tzm": tfng.details},
                    "awaiting_native_review": spec.awaiting_native_review})
            except ValidationError as exc:
                problem = exc.errors(include_url=False, include_input=False)[0]["msg"]
                raise ValueError(f"tifinagh.{name}: {problem}") from None
        return out


@dataclass(frozen=True)
class Catalog:
    """The known event types, their parsed templates, and where they were read from."""

    types: Mapping[str, EventTypeSpec]
    source: str
    _templates: Mapping[str, Mapping[Lang, Template]]

    @classmethod
    def of(cls, types: Mapping[str, EventTypeSpec], source: str = "(memory)") -> Catalog:
        ordered = dict(sorted(types.items()))
        templates = {name: {lang: spec.template(lang) for lang in LANGS}
                     for name, spec in ordered.items()}
        return cls(ordered, source, templates)

    def knows(self, event_type: str) -> bool:
        return event_type in self.types

    def templates(self, event_type: str) -> Mapping[Lang, Template] | None:
        return self._templates.get(event_type)


def parse_catalog(raw: bytes, source: str, tzm_script: TzmScript = "latin") -> Catalog:
    """A catalog from the bytes of a catalog file, its Tamazight in ``tzm_script``;
    :class:`CatalogError` says what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{source}: not valid JSON ({exc})") from None
    try:
        parsed = CatalogFile.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False))
        raise CatalogError(f"{source}: not a valid event-type catalog: {problems}") from None
    try:
        tifinagh = parsed.in_tifinagh()
    except ValueError as exc:
        raise CatalogError(f"{source}: not a valid event-type catalog: {exc}") from None
    return Catalog.of(tifinagh if tzm_script == "tifinagh" else parsed.in_latin(), source)


def bundled(tzm_script: TzmScript = "latin") -> Catalog:
    """The catalog shipped with ingest (read once per script)."""
    return _bundled(tzm_script)


@functools.cache
def _bundled(tzm_script: TzmScript) -> Catalog:
    raw = resources.files("services.ingest").joinpath(BUNDLED).read_bytes()
    return parse_catalog(raw, f"services/ingest/{BUNDLED}", tzm_script)


def load_catalog(path: Path | None, tzm_script: TzmScript = "latin") -> Catalog:
    """The catalog at ``path`` (it replaces the bundled one), or the bundled one if ``None``;
    its Tamazight texts in ``tzm_script``.

    An operator's catalog lacking one of :data:`INTERNAL_TYPES` gets the bundled entry for it,
    so the platform's own events are always known (and always completed).
    """
    base = bundled(tzm_script)
    if path is None:
        return base
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the event-type catalog "
                           f"({exc.strerror or exc})") from None
    own = parse_catalog(raw, str(path), tzm_script)
    types = dict(own.types)
    for name in INTERNAL_TYPES:
        types.setdefault(name, base.types[name])
    return Catalog.of(types, str(path))


def complete_details(event: Event, catalog: Catalog) -> Event:
    """``event`` with the ``details`` languages it lacks added from the catalog (see the
    module's rules); the very same object when there is nothing to add. Idempotent."""
    templates = catalog.templates(event.event)
    if templates is None:
        return event
    data = event.data
    given: Any = data.get("details")
    if given is None:
        own: dict[str, JsonValue] = {}
    elif isinstance(given, dict):
        if all(given.get(lang) is not None for lang in LANGS):
            return event  # the common case: the publisher wrote all four
        own = dict(given)
    elif isinstance(given, str) and event.lang is not None:
        own = {event.lang: given}
    else:
        return event
    added: dict[str, JsonValue] = {}
    for lang in LANGS:
        if own.get(lang) is None:
            text = templates[lang].render(data)
            if text is not None:
                added[lang] = text
    if not added:
        return event
    return event.model_copy(update={"data": {**data, "details": {**own, **added}}})


def admits(catalog: Catalog, policy: UnknownPolicy, event_type: str) -> bool:
    """May an event of ``event_type`` enter? Known types always; unknown ones per ``policy``."""
    return policy == "accept" or catalog.knows(event_type)


def unknown_message(event_type: str) -> str:
    """Why an unknown type is refused, and what to do about it (HTTP error and parked
    message alike)."""
    return (f"Event type {event_type!r} is not in the event-type catalog and "
            "DIHYA_INGEST_UNKNOWN_EVENT_TYPES is 'refuse': add it to the catalog "
            "(DIHYA_INGEST_EVENT_CATALOG) or publish a known type; GET /v1/event-types "
            "lists them.")
