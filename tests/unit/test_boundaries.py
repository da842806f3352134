"""Design invariant 1: services are linked only through ``shared/``.

Parses every module of every service and fails on an import of another service's package (or of
the development tooling in ``demo/``), and on ``shared/`` importing any service.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())


def _imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return found


def test_all_four_services_exist() -> None:
    assert set(SERVICES) >= {"ingest", "signer", "deliverer", "audit"}


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_no_other_service(service: str) -> None:
    bad = {
        name
        for name in _imports(ROOT / "services" / service)
        if (name.startswith("services.") and not name.startswith(f"services.{service}"))
        or name == "services"
        or name.split(".")[0] in {"demo", "tests", "bench"}
    }
    assert not bad, f"services/{service} imports {sorted(bad)}"


def test_shared_imports_no_service() -> None:
    bad = {n for n in _imports(ROOT / "shared") if n.split(".")[0] in {"services", "demo", "tests"}}
    assert not bad, f"shared imports {sorted(bad)}"


def test_cli_imports_no_service() -> None:
    """The CLI talks to the services over their HTTP APIs; what it shares with them (the
    subscription-filter contract, say) comes from ``shared/``."""
    bad = {n for n in _imports(ROOT / "cli") if n.split(".")[0] == "services"}
    assert not bad, f"cli imports {sorted(bad)}"
