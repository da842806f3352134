"""The configuration reference, generated from each service's settings model.

``python -m docgen.envdoc`` rewrites the block between the ``config`` markers in
docs/configuration.md, the one page that lists every variable (the README and the runbook link
to it); a test fails when the page and the settings models disagree, so the documented
variables are always the ones the services read.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
START, END = "<!-- config:start -->", "<!-- config:end -->"
SERVICES = ("ingest", "signer", "deliverer", "audit")


def _settings(service: str) -> type[BaseSettings]:
    module = importlib.import_module(f"services.{service}.settings")
    found = [v for v in vars(module).values() if isinstance(v, type)
             and issubclass(v, ServiceSettings) and v.__module__ == module.__name__]
    assert len(found) == 1, f"services/{service}/settings.py: one settings model expected"
    return found[0]


def env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable that sets ``field`` (its alias, else prefix + name)."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return (str(cls.model_config.get("env_prefix", "")) + name).upper()


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "—"
    text = "`***`" if "Secret" in type(value).__name__ else f"`{value}`"
    return text.replace("|", "\\|")


def _rows(cls: type[BaseSettings], names: set[str]) -> list[str]:
    rows = []
    for name, field in cls.model_fields.items():
        if name not in names:
            continue
        desc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{env_name(cls, name, field)}` | {_default(field)} | {desc} |")
    return rows


def variables(service: str) -> list[str]:
    """Every environment variable ``service`` reads."""
    cls = _settings(service)
    return [env_name(cls, n, f) for n, f in cls.model_fields.items()]


def render() -> str:
    head = ["| variable | default | meaning |", "|---|---|---|"]
    common = set(ServiceSettings.model_fields)
    parts = ["Shared by every service:", "", *head, *_rows(ServiceSettings, common), ""]
    for service in SERVICES:
        cls = _settings(service)
        own = set(cls.model_fields) - common
        parts += [f"`{service}`:", "", *head, *_rows(cls, own), ""]
    return "\n".join(parts)


def updated(page: str) -> str:
    """``page`` with the block between the markers rendered anew."""
    before, _, rest = page.partition(START)
    _, _, after = rest.partition(END)
    return f"{before}{START}\n{render()}{END}{after}"


if __name__ == "__main__":
    CONFIGURATION.write_text(updated(CONFIGURATION.read_text()))
    print(f"updated {CONFIGURATION}")
