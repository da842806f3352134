"""The event-type catalog: the bundled file is complete, templates are safe, completion never
overwrites a publisher's text and is idempotent, unknown types follow the policy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.catalog import (
    INTERNAL_TYPES,
    LANGS,
    MAX_VALUE,
    Catalog,
    CatalogError,
    bundled,
    complete_details,
    load_catalog,
    parse_catalog,
    parse_template,
)
from services.ingest.decisions import Rejection, screen
from services.ingest.settings import Settings
from shared.contracts import Event

TIFINAGH = re.compile("[\u2d30-\u2d7f]")
ARABIC = re.compile("[\u0600-\u06ff]")

TEXTS = {"fr": "Modèle {template_id} créé par {user_id}.",
         "en": "Template {template_id} created by {user_id}.",
         "ar": "أنشأ المستخدم {user_id} القالب {template_id}.",
         "tzm": "ⵉⵙⵏⵓⵍⴼⴰ ⵓⵏⵙⵙⵎⵔⵙ {user_id} ⴰⵎⴷⵢⴰ {template_id}."}
DESCRIPTION = {"fr": "Modèle créé.", "en": "Template created.", "ar": "تم إنشاء قالب.",
               "tzm": "ⵉⵜⵜⵓⵙⵏⵓⵍⴼⴰ ⵢⴰⵏ ⵓⵎⴷⵢⴰ."}


def catalog_bytes(details: dict[str, str] | None = None, name: str = "template.created",
                  **more: Any) -> bytes:
    entry = {"description": DESCRIPTION, "details": details or TEXTS}
    return orjson.dumps({"version": 1, "event_types": {name: entry, **more}})


def event(data: dict[str, Any], *, kind: str = "template.created", lang: str | None = "fr"
          ) -> Event:
    return Event.model_validate({"event": kind, "lang": lang, "data": data})


# -- the bundled catalog -----------------------------------------------------------------


LATIN_TZM = re.compile("[a-zčḍǧḥɛɣṛṣṭẓ]")


def test_the_bundled_catalog_describes_every_type_in_all_four_languages() -> None:
    """Tamazight in Latin script as the guide writes it, each with its Tifinagh form."""
    raw = orjson.loads((Path(__file__).parents[2] / "services/ingest/event_types.json")
                       .read_bytes())
    entries = raw["event_types"]
    assert set(INTERNAL_TYPES) <= set(entries)
    assert {"template.created", "template.updated", "template.deleted",
            "incident.security", "user.created"} <= set(entries)
    for name, entry in entries.items():
        for part in ("description", "details"):
            texts = entry[part]
            assert set(texts) == set(LANGS), (name, part)
            assert all(isinstance(t, str) and t.strip() for t in texts.values()), (name, part)
            assert ARABIC.search(texts["ar"]), (name, part, "ar")
            assert LATIN_TZM.search(texts["tzm"]), (name, part, "tzm")
            assert not TIFINAGH.search(texts["tzm"]), (name, part, "tzm")
            assert TIFINAGH.search(raw["tifinagh"][name][part]), (name, part, "tifinagh")
            assert texts["fr"] != texts["en"], (name, part)
    assert set(raw["tifinagh"]) == set(entries)
    assert set(bundled().types) == set(entries)  # and it loads (templates safe, consistent)
    assert set(bundled("tifinagh").types) == set(entries)


def test_the_bundled_catalog_is_package_data() -> None:
    """setuptools ships ``*.json`` of every package: the file must sit in one."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"*" = ["*.json"' in pyproject
    assert (Path(__file__).parents[2] / "services/ingest/__init__.py").exists()


def test_the_guides_example_is_completed_in_the_four_languages() -> None:
    out = complete_details(event({"template_id": "abc123", "user_id": "user42",
                                  "details": {"fr": "Mon texte"}}), bundled())
    assert out.data["details"] == {
        "fr": "Mon texte",
        "en": "Template abc123 created by user42.",
        "ar": "أنشأ المستخدم user42 القالب abc123.",
        "tzm": "Template abc123 yettwarna sɣur user42.",
    }
    assert out.data["template_id"] == "abc123" and out.lang == "fr"
    assert bundled().types["template.created"].description.tzm == "Yettwarna template amaynut."


def test_tifinagh_is_a_deployment_choice_and_a_publishers_tzm_is_never_rewritten() -> None:
    tfng = bundled("tifinagh")
    out = complete_details(event({"template_id": "abc123", "user_id": "user42"}), tfng)
    assert out.data["details"]["tzm"] == "ⵉⵙⵏⵓⵍⴼⴰ ⵓⵏⵙⵙⵎⵔⵙ user42 ⴰⵎⴷⵢⴰ abc123."  # type: ignore[index]
    assert out.data["details"]["en"] == "Template abc123 created by user42."  # type: ignore[index]
    for catalog in (bundled(), tfng):
        for own in ("Yettwarna template amaynut", "ⵢⵜⵜⵡⴰⵔⵏⴰ ⵜⵎⵒⵍⴰⵜ"):
            kept = complete_details(event({"template_id": "t", "user_id": "u",
                                           "details": {"tzm": own}}), catalog)
            assert kept.data["details"]["tzm"] == own  # type: ignore[index]
            as_text = complete_details(event({"template_id": "t", "user_id": "u",
                                              "details": own}, lang="tzm"), catalog)
            assert as_text.data["details"]["tzm"] == own  # type: ignore[index]


def with_tifinagh(tifinagh: dict[str, Any]) -> bytes:
    return orjson.dumps({**orjson.loads(catalog_bytes()), "tifinagh": tifinagh})


def test_a_tifinagh_form_is_checked_whichever_script_is_chosen() -> None:
    bad = {"template.created": {"description": "ⴰ", "details": "ⴰ {other}"}}
    for script in ("latin", "tifinagh"):
        with pytest.raises(CatalogError, match=r"tifinagh\.template\.created: .*placeholders"):
            parse_catalog(with_tifinagh(bad), "c.json", script)  # type: ignore[arg-type]
    stray = {"nope.x": {"description": "ⴰ", "details": "ⴰ"}}
    with pytest.raises(CatalogError, match=r"not in event_types: nope\.x"):
        parse_catalog(with_tifinagh(stray), "c.json")
    without = parse_catalog(catalog_bytes(), "c.json", "tifinagh")
    assert without.types["template.created"].details.tzm == TEXTS["tzm"], \
        "a type without a Tifinagh form keeps its text"


# -- what completion does with each shape of details --------------------------------------


def test_no_details_get_all_four_and_a_string_is_the_text_in_lang() -> None:
    cat = bundled()
    none = complete_details(event({"template_id": "t1", "user_id": "u1"}), cat)
    assert set(none.data["details"]) == set(LANGS)  # type: ignore[arg-type]
    null = complete_details(event({"template_id": "t1", "user_id": "u1", "details": None}), cat)
    assert null.data["details"] == none.data["details"]

    text = complete_details(event({"template_id": "t1", "user_id": "u1", "details": "Salut"},
                                  lang="ar"), cat)
    details = text.data["details"]
    assert isinstance(details, dict) and details["ar"] == "Salut"
    assert details["fr"] == "Modèle t1 créé par u1."

    unknown_lang = event({"template_id": "t1", "user_id": "u1", "details": "Salut"}, lang=None)
    assert complete_details(unknown_lang, cat) is unknown_lang  # whose language? left alone
    listed = event({"template_id": "t1", "user_id": "u1", "details": ["a", "b"]})
    assert complete_details(listed, cat) is listed


def test_extra_keys_and_null_languages() -> None:
    out = complete_details(event({"template_id": "t", "user_id": "u",
                                  "details": {"de": "Vorlage", "en": None, "fr": 7}}), bundled())
    details = out.data["details"]
    assert isinstance(details, dict)
    assert details["de"] == "Vorlage" and details["fr"] == 7  # the publisher's, kept
    assert details["en"] == "Template t created by u."  # null is no text: filled


def test_a_language_is_completed_only_when_every_placeholder_has_a_plain_value() -> None:
    cat = bundled()
    missing = event({"user_id": "u1", "details": {"fr": "x"}})
    assert complete_details(missing, cat) is missing
    for bad in ({"k": "v"}, ["v"], True, None, "x" * (MAX_VALUE + 1)):
        odd = event({"template_id": bad, "user_id": "u1"})
        assert complete_details(odd, cat) is odd, bad
    numbers = complete_details(event({"template_id": 42, "user_id": 1.5}, lang=None), cat)
    assert numbers.data["details"]["en"] == "Template 42 created by 1.5."  # type: ignore[index]


def test_unknown_types_are_untouched_and_the_policy_decides() -> None:
    cat = bundled()
    other = event({"details": {"fr": "x"}}, kind="order.paid")
    assert complete_details(other, cat) is other
    assert screen(other, cat, "accept") is other
    refused = screen(other, cat, "refuse")
    assert isinstance(refused, Rejection)
    assert refused.reason == "unknown_event_type" and refused.event_type == "order.paid"
    assert "DIHYA_INGEST_UNKNOWN_EVENT_TYPES" in refused.error
    known = screen(event({"template_id": "t", "user_id": "u"}), cat, "refuse")
    assert isinstance(known, Event) and set(known.data["details"]) == set(LANGS)  # type: ignore[arg-type]
    probe = Event(event="dihya.test", data={"endpoint_id": "ep_1"})
    assert isinstance(screen(probe, cat, "refuse"), Event)


# -- properties ---------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                   allow_infinity=False) \
    | st.text(max_size=30)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
lang_keys = st.sampled_from([*LANGS, "de", "x"])
details_value = st.none() | st.text(max_size=20) | json_value \
    | st.dictionaries(lang_keys, json_value, max_size=6)
data_key = st.sampled_from(["template_id", "user_id", "endpoint_id", "reason", "details",
                            "other"]) | st.text(max_size=8)
data_strategy = st.dictionaries(data_key, json_value, max_size=6)
kinds = st.sampled_from(["template.created", "template.deleted", "user.created",
                         "endpoint.disabled", "dihya.test", "incident.security", "order.paid"])
langs = st.none() | st.sampled_from(LANGS)


@settings(max_examples=300, deadline=None)
@given(data=data_strategy, details=details_value, kind=kinds, lang=langs, has=st.booleans())
def test_completion_never_overwrites_never_crashes_and_is_idempotent(
        data: dict[str, Any], details: Any, kind: str, lang: str | None, has: bool) -> None:
    if has:
        data = {**data, "details": details}
    before = event(data, kind=kind, lang=lang)
    after = complete_details(before, bundled())
    assert after.event == before.event and after.lang == before.lang and after.id == before.id
    assert {k: v for k, v in after.data.items() if k != "details"} == \
        {k: v for k, v in before.data.items() if k != "details"}
    old, new = before.data.get("details"), after.data.get("details")
    if isinstance(old, dict):
        assert isinstance(new, dict)
        for key, value in old.items():  # every text the publisher set is still there, as set
            if value is not None:
                assert new[key] == value
    elif isinstance(old, str) and new != old:
        assert isinstance(new, dict) and lang is not None and new[lang] == old
    elif old is not None:
        assert new == old  # neither object nor string: not ours to touch
    assert complete_details(after, bundled()) == after  # idempotent
    if after is not before:  # only when a language was added
        had = ({k for k in LANGS if old.get(k) is not None} if isinstance(old, dict)
               else {lang} if isinstance(old, str) else set())
        assert isinstance(new, dict) and {k for k in LANGS if new.get(k) is not None} > had


@settings(max_examples=200, deadline=None)
@given(template=st.text(max_size=40), data=data_strategy)
def test_any_template_either_loads_safely_or_is_refused(template: str, data: dict[str, Any]
                                                       ) -> None:
    """Whatever a catalog author writes: refused at load, or rendering only looks up data."""
    try:
        parsed = parse_template(template)
    except ValueError:
        return
    text = parsed.render(data)
    assert text is None or isinstance(text, str)
    for name in parsed.fields:
        assert name.isidentifier()


# -- loading and validating catalog files -------------------------------------------------


@pytest.mark.parametrize("template", [
    "{0.__class__}", "{template_id.__class__.__mro__}", "{x[0]}", "{data[user_id]}", "{}",
    "{0}", "{user_id!r}", "{user_id:>1000000}", "{user_id:{user_id}}", "open {", "close }",
])
def test_format_string_injection_is_refused_at_load(template: str) -> None:
    details = {**TEXTS, "en": template}
    with pytest.raises(CatalogError) as caught:
        parse_catalog(catalog_bytes(details), "custom.json")
    message = str(caught.value)
    assert "custom.json" in message and "details" in message and "en" in message


def test_languages_must_agree_on_placeholders_and_all_four_are_required() -> None:
    with pytest.raises(CatalogError, match="same placeholders"):
        parse_catalog(catalog_bytes({**TEXTS, "ar": "أنشأ {user_id}."}), "c.json")
    without_tzm = {k: v for k, v in TEXTS.items() if k != "tzm"}
    with pytest.raises(CatalogError, match="tzm"):
        parse_catalog(catalog_bytes(without_tzm), "c.json")
    with pytest.raises(CatalogError, match="event_types"):
        parse_catalog(catalog_bytes(name="Not A Type"), "c.json")
    with pytest.raises(CatalogError, match="not valid JSON"):
        parse_catalog(b"{nope", "c.json")
    with pytest.raises(CatalogError, match="version"):
        parse_catalog(orjson.dumps({"version": 2, "event_types": {}}), "c.json")
    literal = parse_catalog(catalog_bytes({k: "{{literal}} braces" for k in LANGS}), "c.json")
    rendered = literal.templates("template.created")["en"].render({})  # type: ignore[index]
    assert rendered == "{literal} braces"


def test_an_operators_catalog_replaces_the_bundled_one_but_keeps_internal_types(
        tmp_path: Path) -> None:
    own = tmp_path / "types.json"
    own.write_bytes(catalog_bytes(name="invoice.paid", details={
        "fr": "Facture {n} payée.", "en": "Invoice {n} paid.", "ar": "دُفعت الفاتورة {n}.",
        "tzm": "ⵜⵜⵓⵅⵍⵚ ⵜⴼⴰⴽⵜⵓⵔⵜ {n}."}))
    cat = load_catalog(own)
    assert set(cat.types) == {"invoice.paid", *INTERNAL_TYPES}
    assert cat.source == str(own)
    assert not cat.knows("template.created")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.json")
    assert load_catalog(None) is bundled()


def test_settings_read_the_catalog_path_and_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().unknown_event_types == "accept" and Settings().event_catalog is None
    assert Settings().tzm_script == "latin"
    monkeypatch.setenv("DIHYA_TZM_SCRIPT", "tifinagh")
    assert Settings().tzm_script == "tifinagh"
    monkeypatch.setenv("DIHYA_INGEST_UNKNOWN_EVENT_TYPES", "refuse")
    monkeypatch.setenv("DIHYA_INGEST_EVENT_CATALOG", "/etc/dihya/types.json")
    got = Settings()
    assert got.unknown_event_types == "refuse" and got.event_catalog == Path(
        "/etc/dihya/types.json")
    monkeypatch.setenv("DIHYA_INGEST_UNKNOWN_EVENT_TYPES", "maybe")
    with pytest.raises(ValueError, match="accept"):
        Settings()


def test_catalog_of_sorts_types() -> None:
    cat = Catalog.of(dict(reversed(list(bundled().types.items()))))
    assert list(cat.types) == sorted(cat.types)


# -- which translations await a native speaker's review ------------------------------------


def test_every_arabic_and_tamazight_text_of_the_bundled_catalog_awaits_review() -> None:
    """The issue's rule: every Tamazight and Arabic text still says it awaits a native review —
    in the file itself, so the API, the console and the CLI can say it too."""
    raw = orjson.loads(Path("services/ingest/event_types.json").read_bytes())
    assert raw["awaiting_native_review"] == ["ar", "tzm"]
    for script in ("latin", "tifinagh"):
        for name, spec in bundled(script).types.items():  # type: ignore[arg-type]
            assert {"ar", "tzm"} <= set(spec.unreviewed), (script, name)


def test_a_type_may_say_otherwise_and_a_bad_list_is_refused() -> None:
    reviewed = {"description": DESCRIPTION, "details": TEXTS, "awaiting_native_review": []}
    doc = {"version": 1, "awaiting_native_review": ["tzm", "ar"],
           "event_types": {"template.created": {"description": DESCRIPTION, "details": TEXTS},
                           "invoice.paid": reviewed},
           "tifinagh": {"invoice.paid": {"description": "ⴰ", "details": TEXTS["tzm"]}}}
    for script in ("latin", "tifinagh"):
        cat = parse_catalog(orjson.dumps(doc), "c.json", script)  # type: ignore[arg-type]
        assert cat.types["template.created"].unreviewed == ("ar", "tzm")  # the file's order
        assert cat.types["invoice.paid"].unreviewed == ()
    assert parse_catalog(catalog_bytes(), "c.json").types["template.created"].unreviewed == ()
    for bad in (["xx"], ["ar", "ar"], "ar"):
        with pytest.raises(CatalogError, match="awaiting_native_review"):
            parse_catalog(orjson.dumps({**doc, "awaiting_native_review": bad}), "c.json")
        with pytest.raises(CatalogError, match="awaiting_native_review"):
            parse_catalog(orjson.dumps({"version": 1, "event_types": {
                "a.b": {**reviewed, "awaiting_native_review": bad}}}), "c.json")
