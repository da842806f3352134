"""The documentation states what the code does: the configuration reference is generated, the
README is short and every command block in it is run by CI or says why not, links resolve and
every variable named exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docgen import envdoc
from tests import readme_blocks
from tests.unit.test_i18n_docs import _LINK as LINK
from tests.unit.test_i18n_docs import _anchors as anchors
from tests.unit.test_i18n_docs import _known_variables as known_variables
from tests.unit.test_i18n_docs import _prose as prose


def test_configuration_page_matches_the_settings_models() -> None:
    page = envdoc.CONFIGURATION.read_text()
    assert envdoc.START in page and envdoc.END in page
    assert envdoc.updated(page) == page, "run `python -m docgen.envdoc` to refresh it"


def test_configuration_page_lists_every_variable_of_every_service() -> None:
    page = envdoc.CONFIGURATION.read_text()
    for service in envdoc.SERVICES:
        for name in envdoc.variables(service):
            assert f"| `{name}` |" in page, f"{name} missing from docs/configuration.md"


def test_every_variable_is_documented_with_a_meaning() -> None:
    table = envdoc.render()
    for service in envdoc.SERVICES:
        for name in envdoc.variables(service):
            row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
            assert not row.rstrip().endswith("|  |"), f"{name} has no description"


def test_the_table_is_generated_once() -> None:
    """One generated copy: the README and the runbook link to it instead of repeating it."""
    for page in (envdoc.ROOT / "README.md", envdoc.ROOT / "docs" / "operations.md"):
        text = page.read_text()
        assert envdoc.START not in text and "| `DIHYA_AUDIT_BATCH_SIZE` |" not in text, page.name
        assert "configuration.md" in text, f"{page.name} does not link docs/configuration.md"


# --------------------------------------------------------------------------- README and docs/

README = envdoc.ROOT / "README.md"
PAGES = [README, *sorted((envdoc.ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_short_page() -> None:
    assert len(README.read_bytes()) <= 15_000, "README.md is a product page: move details to docs/"


def test_every_readme_code_block_says_whether_ci_runs_it() -> None:
    found = readme_blocks.blocks()  # raises on a block without a (well-formed) marker
    executed = [b for b in found if b.executed]
    assert len(executed) >= 8, "the quickstart's blocks are executed by tests/e2e/test_readme.py"
    for block in found:
        if block.mode == "elsewhere":
            named = re.findall(r"tests/[\w/]+\.py", block.reason)
            assert all((envdoc.ROOT / n).is_file() for n in named), block.reason


def test_a_block_without_a_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="without a readme-test marker"):
        readme_blocks.blocks("text\n\n```sh\nrm -rf /\n```\n")
    with pytest.raises(ValueError, match="unknown clause"):
        readme_blocks.blocks('<!-- readme-test: run; expext "x" -->\n```sh\nls\n```\n')


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {path}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_variable_named_exists(page: Path) -> None:
    named = set(re.findall(r"\bDIHYA_[A-Z0-9_]*[A-Z0-9]\b", page.read_text(encoding="utf-8")))
    unknown = named - known_variables() - {"DIHYA_WEBHOOK_SECRET", "DIHYA_WEBHOOK_PREVIOUS_SECRET"}
    assert not unknown, f"{page.name} names variables nothing reads: {sorted(unknown)}"
