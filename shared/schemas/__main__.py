"""Regenerate the committed JSON Schemas: ``python -m shared.schemas``."""

from __future__ import annotations

import json
from pathlib import Path

from shared.contracts import CONTRACTS, schema_of

HERE = Path(__file__).parent


def main() -> None:
    for model in CONTRACTS:
        path = HERE / f"{model.__name__}.json"
        path.write_text(json.dumps(schema_of(model), indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
