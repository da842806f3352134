"""The README's essentials in fr, en, ar and tzm (docs/i18n/) say the same thing as the code.

Translations drift silently: a command fixed in one language and not in the others, a link to a
README section that was renamed, a variable that no longer exists. These checks pin what must be
identical across languages (sections, code blocks) and what must be true of the repository
(links, ``DIHYA_*`` names), so only the prose is left to translators.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from docgen import envdoc

ROOT = Path(__file__).resolve().parents[2]
I18N = ROOT / "docs" / "i18n"
LANGS = ("fr", "en", "ar", "tzm")
PAGES = {lang: I18N / f"README.{lang}.md" for lang in LANGS}
INDEX = I18N / "README.md"

_FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_ENV = re.compile(r"\bDIHYA_[A-Z0-9_]*[A-Z0-9]\b")
_TIFINAGH = re.compile(r"[\u2D30-\u2D7F]")
_LATIN = re.compile(r"[A-Za-z]")


@cache
def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code_blocks(text: str) -> list[str]:
    return _FENCE.findall(text)


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return _FENCE.sub("", text)


def _h2(text: str) -> list[str]:
    return [line[3:].strip() for line in _prose(text).splitlines() if line.startswith("## ")]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    kept = "".join(c for c in heading if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose(_text(path)).splitlines()
            if re.match(r"#{1,6} ", line)}


@cache
def _known_variables() -> frozenset[str]:
    """Every DIHYA_* name the code reads: the services' settings models, the CLI, the scripts."""
    names = {name for service in envdoc.SERVICES for name in envdoc.variables(service)}
    readers = [*(ROOT / "cli").rglob("*.py"), *(ROOT / "bin").iterdir(),
               ROOT / "tests" / "conftest.py"]
    for path in readers:
        if path.is_file():
            names |= set(_ENV.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def test_every_language_has_its_page_and_the_index_lists_them() -> None:
    index = _text(INDEX)
    for page in PAGES.values():
        assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
        assert f"]({page.name})" in index, f"docs/i18n/README.md does not link {page.name}"


def test_the_readme_points_to_the_translations() -> None:
    assert "](docs/i18n/README.md)" in _text(ROOT / "README.md")


@pytest.mark.parametrize("lang", [lang for lang in LANGS if lang != "en"])
def test_same_sections_as_english(lang: str) -> None:
    english, other = _h2(_text(PAGES["en"])), _h2(_text(PAGES[lang]))
    assert len(english) >= 8, "the English page lost its sections"
    assert len(other) == len(english), f"{lang}: {other} vs en: {english}"


@pytest.mark.parametrize("lang", [lang for lang in LANGS if lang != "en"])
def test_code_blocks_are_identical_to_english(lang: str) -> None:
    english, other = _code_blocks(_text(PAGES["en"])), _code_blocks(_text(PAGES[lang]))
    assert len(other) == len(english), f"{lang} has {len(other)} code blocks, en {len(english)}"
    for i, (want, got) in enumerate(zip(english, other, strict=True)):
        assert got == want, f"{lang}: code block {i + 1} differs from the English one"


def test_python_examples_are_valid_python() -> None:
    blocks = [b for b in _code_blocks(_text(PAGES["en"])) if b.startswith("```python\n")]
    assert blocks, "the publishing and verifying examples are gone"
    for block in blocks:
        compile(block.split("\n", 1)[1].rsplit("```", 1)[0], "README.en.md", "exec")


@pytest.mark.parametrize("page", [*PAGES.values(), INDEX], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in _LINK.findall(_prose(_text(page))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor} in {path}"


@pytest.mark.parametrize("page", PAGES.values(), ids=lambda p: p.name)
def test_every_variable_named_exists_in_the_code(page: Path) -> None:
    unknown = set(_ENV.findall(_text(page))) - _known_variables()
    assert not unknown, f"{page.name} names variables the code does not read: {sorted(unknown)}"


def test_arabic_code_blocks_stay_left_to_right() -> None:
    """Prose sits in <div dir="rtl">; a code block inside one would render right-aligned."""
    depth = 0
    in_code = False
    for number, line in enumerate(_text(PAGES["ar"]).splitlines(), 1):
        if line.startswith("```"):
            assert depth == 0 or in_code, f"README.ar.md:{number}: code block inside an rtl div"
            in_code = not in_code
        elif not in_code:
            depth += line.count('<div dir="rtl">') - line.count("</div>")
            assert depth in (0, 1), f"README.ar.md:{number}: unbalanced <div>"
    assert depth == 0 and not in_code
    assert '<div dir="rtl">' in _text(PAGES["ar"])


def test_tamazight_uses_one_of_the_cli_scripts() -> None:
    """The page is in Tifinagh, like the CLI's Tifinagh catalog (Latin script is the CLI's
    default, ``tzm.json``); its own words (headings) are Tifinagh throughout."""
    locale = (ROOT / "cli" / "locales" / "tzm@tifinagh.json").read_text(encoding="utf-8")
    assert len(_TIFINAGH.findall(locale)) > len(_LATIN.findall(locale))
    latin = (ROOT / "cli" / "locales" / "tzm.json").read_text(encoding="utf-8")
    assert not _TIFINAGH.search(latin)
    for heading in _h2(_text(PAGES["tzm"])):
        assert _TIFINAGH.search(heading), f"README.tzm.md: heading {heading!r} is not Tifinagh"


def test_the_tamazight_page_says_which_script_the_cli_writes() -> None:
    """The CLI writes Latin by default (Tifinagh by DIHYA_TZM_SCRIPT): the page must not say
    the CLI's messages are Tifinagh like itself."""
    preamble = _text(PAGES["tzm"]).split("## ", 1)[0]
    assert "like the CLI's `tzm` messages" not in preamble
    assert "Latin script by default" in preamble
    assert "`DIHYA_TZM_SCRIPT=tifinagh`" in preamble


@pytest.mark.parametrize("lang", ["ar", "tzm"])
def test_unreviewed_translations_say_so(lang: str) -> None:
    assert "native" in _text(PAGES[lang]).split("## ", 1)[0]
