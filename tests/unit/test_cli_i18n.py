"""The CLI's four message catalogs: complete, consistent, really in their languages, and
covering every key the code asks for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cli import i18n
from cli.commands.audit import FILTERS
from cli.i18n import (
    TIFINAGH,
    VARIANTS,
    Messages,
    catalog,
    choose,
    normalize,
    placeholders,
    script,
)

CLI = Path(__file__).resolve().parents[2] / "cli"
TIFINAGH_RE = re.compile("[\u2d30-\u2d7f]")
ARABIC = re.compile("[\u0600-\u06ff]")
KEY = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)+$")
NOT_KEYS = {"config.toml"}
"""String constants that look like message keys but are not (a file name)."""


def test_every_catalog_has_the_same_keys() -> None:
    english = set(catalog("en"))
    for lang in VARIANTS:
        keys = set(catalog(lang))
        assert keys == english, (lang, sorted(keys ^ english))


@pytest.mark.parametrize("lang", [lang for lang in VARIANTS if lang != "en"])
def test_translations_take_the_same_placeholders(lang: str) -> None:
    english = catalog("en")
    wrong = {key: (placeholders(english[key]), placeholders(text))
             for key, text in catalog(lang).items()
             if placeholders(text) != placeholders(english[key])}
    assert not wrong, wrong


@pytest.mark.parametrize("lang", VARIANTS)
def test_every_message_formats(lang: str) -> None:
    """A stray brace or a bad conversion would crash at the worst moment (an error path)."""
    for key, text in catalog(lang).items():
        text.format(**{name: "x" for name in placeholders(text)})
        assert text.strip(), key


LATIN_TZM = re.compile("[a-zčḍǧḥɛɣṛṣṭẓ]")


def test_tamazight_is_in_latin_script_by_default_and_in_tifinagh_on_request() -> None:
    """As the guide writes it ("Yettwarna template amaynut"); Tifinagh is the other catalog."""
    assert not [key for key, text in catalog("tzm").items() if TIFINAGH_RE.search(text)]
    assert not [key for key, text in catalog(TIFINAGH).items() if not TIFINAGH_RE.search(text)]
    assert Messages("tzm")("endpoint.deleted", id="ep_1") == "Taneqqit ep_1 tettwakkes."
    assert Messages("tzm", "tifinagh")("endpoint.deleted", id="ep_1") == "ⵜⴰⵏⵇⵇⵉⵜ ep_1 ⵜⵜⵓⴽⴽⵙ."
    assert Messages("fr", "tifinagh").variant == "fr"
    assert script(None, "tfng") == "tifinagh" and script("latin", "tifinagh") == "latin"
    assert script() == script("nonsense") == "latin"


def test_arabic_is_written_in_arabic_script() -> None:
    assert not [key for key, text in catalog("ar").items() if not ARABIC.search(text)]


def test_french_is_not_a_copy_of_english() -> None:
    same = [k for k, v in catalog("fr").items() if v == catalog("en")[k] and len(v) > 12]
    assert not same


@pytest.mark.parametrize("lang", VARIANTS)
def test_help_texts_have_no_percent_sign(lang: str) -> None:
    """argparse %-formats help strings: a bare % would crash `--help`."""
    assert not [k for k, v in catalog(lang).items() if k.startswith("help.") and "%" in v]


def _keys_in_code() -> set[str]:
    namespaces = {key.split(".")[0] for key in catalog("en")}
    found: set[str] = set()
    for path in CLI.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                       for part in node.values}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in in_fstrings and node.value not in NOT_KEYS
                    and KEY.match(node.value) and node.value.split(".")[0] in namespaces):
                found.add(node.value)
    return found


def test_every_key_the_code_uses_exists() -> None:
    used = _keys_in_code() | {f"help.filter.{name}" for name in FILTERS}
    used |= {f"status.{s}" for s in ("enabled", "disabled", "delivered", "failed", "held",
                                     "retried")}
    assert len(used) > 150
    missing = sorted(used - set(catalog("en")))
    assert not missing


def test_no_catalog_key_is_dead() -> None:
    used = _keys_in_code() | {f"help.filter.{name}" for name in FILTERS}
    dead = sorted(k for k in catalog("en") if k not in used and not k.startswith("status."))
    assert not dead


@pytest.mark.parametrize(
    ("value", "expected"),
    [("fr_FR.UTF-8", "fr"), ("ar_MA", "ar"), ("ar-MA", "ar"), ("en_US@euro", "en"),
     ("tzm", "tzm"), ("zgh_MA.UTF-8", "tzm"), ("ber", "tzm"), ("FR", "fr"), ("C", None),
     ("POSIX", None), ("C.UTF-8", None), ("de_DE", None), ("", None), (None, None)],
)
def test_normalize_reads_locale_strings(value: str | None, expected: str | None) -> None:
    assert normalize(value) == expected


def test_language_precedence() -> None:
    env = {"DIHYA_LANG": "ar", "LC_ALL": "fr_FR.UTF-8", "LANG": "en_US.UTF-8"}
    assert choose("tzm", env) == "tzm"
    assert choose(None, env, "fr") == "ar"
    assert choose(None, {"LANG": "ar_MA.UTF-8"}, "fr") == "fr"
    assert choose(None, {"LC_ALL": "C.UTF-8", "LC_MESSAGES": "fr_FR", "LANG": "ar_MA"}) == "fr"
    assert choose(None, {"LANG": "ar_MA.UTF-8"}) == "ar"
    assert choose(None, {"DIHYA_LANG": "klingon", "LANG": "C"}) == "en"
    assert choose(None, {}) == "en"


def test_messages_fall_back_to_english_for_a_missing_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    partial = {k: v for k, v in catalog("fr").items() if k != "endpoint.created"}
    monkeypatch.setattr(i18n, "catalog", lambda lang: partial if lang == "fr"
                        else catalog.__wrapped__(lang))
    t = Messages("fr")
    assert t("endpoint.created", id="ep_1") == "Endpoint ep_1 created."
    assert t("endpoint.deleted", id="ep_1") == "Endpoint ep_1 supprimé."
    assert Messages("ar").rtl and not t.rtl


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown language"):
        catalog("xx")


@pytest.mark.parametrize(("argv", "env", "note"), [
    (["--lang", "ar"], {}, "ar"),
    (["--lang", "tzm"], {}, "tzm"),
    (["--lang", "tzm"], {"DIHYA_TZM_SCRIPT": "tifinagh"}, TIFINAGH),
    (["--lang", "fr"], {}, None),
    (["--lang", "en"], {}, None),
])
def test_help_says_when_its_translation_awaits_a_native_review(
        argv: list[str], env: dict[str, str], note: str | None) -> None:
    """Every Arabic and Tamazight catalog says, in its own words, that it awaits review."""
    import io

    from cli.main import run

    out = io.StringIO()
    assert run([*argv, "--help"], env={"HOME": "/nonexistent", **env}, stdout=out,
               stderr=io.StringIO()) == 0
    shown = " ".join(out.getvalue().split())  # help is wrapped to the terminal
    for lang in VARIANTS:
        review = " ".join(catalog(lang)["help.unreviewed"].split())
        assert (review in shown) == (lang == note), (lang, note)
