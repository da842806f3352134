"""The documentation states what the code does: the configuration table is generated."""

from __future__ import annotations

from demo import envdoc


def test_readme_configuration_matches_the_settings_models() -> None:
    readme = envdoc.README.read_text()
    assert envdoc.START in readme
    assert envdoc.updated(readme) == readme, "run `python -m demo.envdoc` to refresh README.md"


def test_every_variable_is_documented_with_a_meaning() -> None:
    table = envdoc.render()
    for service in envdoc.SERVICES:
        for name in envdoc.variables(service):
            row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
            assert not row.rstrip().endswith("|  |"), f"{name} has no description"
