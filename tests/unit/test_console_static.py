"""The web console's static files: four complete catalogs, every message the page asks for,
nothing loaded from elsewhere, nothing the Content-Security-Policy would block, and every file
shipped by a non-editable install."""

from __future__ import annotations

import fnmatch
import re
import string
import tomllib
from pathlib import Path

import orjson
import pytest

from services.audit.decisions import RECORD_KINDS
from services.ingest.console import CONTENT_TYPES, LANGUAGES, STATIC, load_assets

ROOT = Path(__file__).resolve().parents[2]
LOCALES = STATIC / "locales"
APP_JS = (STATIC / "app.js").read_text("utf-8")
INDEX = (STATIC / "index.html").read_text("utf-8")


def catalog(lang: str) -> dict[str, str]:
    data = orjson.loads((LOCALES / f"{lang}.json").read_bytes())
    assert isinstance(data, dict)
    return data


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_every_catalog_has_the_english_keys_and_placeholders(lang: str) -> None:
    english, other = catalog("en"), catalog(lang)
    assert sorted(set(english) - set(other)) == [], f"{lang} lacks these keys"
    assert sorted(set(other) - set(english)) == [], f"{lang} has keys English lacks"
    for key, template in english.items():
        assert other[key].strip(), (lang, key)
        assert placeholders(other[key]) == placeholders(template), (lang, key)


def test_the_catalogs_are_in_their_own_script() -> None:
    """A catalog copied from English by mistake would pass the key check: the Arabic one is
    written in Arabic letters, the Tifinagh one in Tifinagh, and the Latin Tamazight one in
    Latin letters with Tamazight's own (gamma, epsilon, the dotted emphatics) — not a copy
    of English."""
    def share(lang: str, lo: int, hi: int) -> float:
        text = "".join(catalog(lang).values())
        letters = [c for c in text if c.isalpha()]
        return sum(lo <= ord(c) <= hi for c in letters) / len(letters)

    assert share("ar", 0x0600, 0x06FF) > 0.7
    assert share("tzm-Tfng", 0x2D30, 0x2D7F) > 0.7
    latin = "".join(catalog("tzm").values())
    assert share("tzm", 0x0041, 0x024F) + share("tzm", 0x1E00, 0x1EFF) > 0.95
    assert sum(latin.count(c) for c in "ɣɛḍṛṣṭẓḥ") > 100
    english = catalog("en")
    assert sum(catalog("tzm")[k] == v for k, v in english.items()) < 10


def used_keys() -> set[str]:
    """Every message key the page names literally: data-i18n attributes and t("…") calls."""
    code = re.sub(r"export const KINDS = \[.*?\];", "", APP_JS, flags=re.S)  # not messages
    keys = set(re.findall(r'data-i18n(?:-label)?="([^"]+)"', INDEX))
    keys |= set(re.findall(r'\bt\(\s*"([a-z_]+\.[a-z_.]+)"', code))
    keys |= set(re.findall(r'"((?:field|endpoint|form)\.[a-z_]+)"', code))
    return keys


def test_every_key_the_page_uses_exists() -> None:
    english = catalog("en")
    keys = used_keys()
    assert len(keys) > 100
    assert sorted(keys - set(english)) == []


def test_keys_built_at_run_time_exist() -> None:
    """Keys the page builds from API values (a role, a status, an outcome, an error code)."""
    english = catalog("en")
    built = [f"role.{r}" for r in ("admin", "viewer", "auditor", "publisher")]
    built += [f"estatus.{s}" for s in ("enabled", "disabled", "failing")]
    built += [f"lstatus.{s}" for s in ("pending", "delivered", "failed", "held", "retried")]
    built += [f"lcount.{s}" for s in ("pending", "delivered", "failed", "held")]
    built += [f"{kind}.{part}" for kind in ("secret", "token")
              for part in ("title", "once", "label")]
    built += [f"types.policy_{p}" for p in ("accept", "refuse")]
    built += [f"reason.{r}" for r in ("manual", "gone", "failing")]
    built += [f"outcome.{o}" for o in ("delivered", "failed", "dead_lettered")]
    built += [f"error.{c}" for c in ("unauthorized", "forbidden", "not_found",
                                     "validation_failed", "invalid_query", "broker_unavailable",
                                     "endpoint_disabled", "already_retried",
                                     "delivery_in_flight", "payload_not_retained",
                                     "invalid_subject")]
    assert [k for k in built if k not in english] == []
    assert "test.details" in english  # the test event's details, in every language


def test_the_audit_kinds_the_page_offers_are_the_audit_services() -> None:
    block = re.search(r"export const KINDS = \[(.*?)\];", APP_JS, re.S)
    assert block is not None
    assert re.findall(r'"([a-z_.]+)"', block.group(1)) == list(RECORD_KINDS)


URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+""")


def test_no_static_file_loads_anything_from_elsewhere() -> None:
    for name, asset in load_assets().items():
        text = asset.body.decode("utf-8")
        if name.endswith(".svg"):  # the XML namespace is a name, not a fetch
            text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        if name == "charts.js":  # createElementNS names the SVG namespace, fetching nothing
            text = text.replace('const SVG = "http://www.w3.org/2000/svg";', "")
        if name.endswith(".json"):
            continue  # messages, loaded as data; they mention no URL either (checked below)
        hits = [m.group(0) for m in URL.finditer(text)]
        assert hits == [], (name, hits)
    for lang in LANGUAGES:
        assert not any("://" in value for value in catalog(lang).values())
    assert "@import" not in (STATIC / "style.css").read_text()
    assert "url(" not in (STATIC / "style.css").read_text()


def test_the_page_has_nothing_the_policy_would_block() -> None:
    """script-src and style-src 'self' without 'unsafe-inline': no inline script, no event
    handler attribute, no style attribute, no javascript: URL."""
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", INDEX, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", INDEX, re.I)
    assert not re.search(r"\sstyle\s*=", INDEX, re.I)
    assert "javascript:" not in INDEX.lower()
    assert "<style" not in INDEX.lower()
    assert "innerHTML" not in APP_JS and "insertAdjacentHTML" not in APP_JS
    assert "eval(" not in APP_JS and "new Function" not in APP_JS


def test_the_token_stays_in_session_storage() -> None:
    api_js = (STATIC / "api.js").read_text("utf-8")
    assert "sessionStorage.setItem(TOKEN_KEY" in api_js
    assert "localStorage" not in api_js
    assert "console.log" not in APP_JS + api_js


def test_every_input_has_a_label() -> None:
    ids = re.findall(r"<(?:input|select|textarea)\b[^>]*\bid=\"([^\"]+)\"", INDEX)
    labelled = set(re.findall(r'<label\s+for="([^"]+)"', INDEX))
    assert ids and sorted(set(ids) - labelled) == []
    assert not re.search(r"<(?:input|select|textarea)\b(?![^>]*\bid=)", INDEX)


def test_a_non_editable_install_ships_every_static_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["services.ingest.console"]
    package = STATIC.parent
    files = [p.relative_to(package).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert missing == []
    assert {Path(f).suffix for f in files} <= set(CONTENT_TYPES)


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_focus_ring_stands_out_three_to_one() -> None:
    """WCAG 1.4.11 (non-text contrast): the focus ring against white, the page and the cards,
    in the light and the dark theme (the amber it had was 2.2:1 on white)."""
    css = (STATIC / "style.css").read_text()
    light, dark = (dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", block))
                   for block in re.findall(r":root \{(.*?)\n\s*\}", css, re.S)[:2])
    assert _contrast(light["focus"], "#ffffff") >= 3
    for background in ("bg", "card"):
        assert _contrast(light["focus"], light[background]) >= 3, background
        assert _contrast(dark["focus"], dark[background]) >= 3, background
    assert _contrast("#f59e0b", "#ffffff") < 3  # the old amber: what this test guards against
