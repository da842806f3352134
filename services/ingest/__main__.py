"""``python -m services.ingest``: run the ingest service, configured from the environment."""

from __future__ import annotations

import sys

from services.ingest.app import start
from services.ingest.catalog import CatalogError, load_catalog
from services.ingest.settings import Settings
from shared import logging
from shared.runtime import Stop, run


def main() -> None:
    settings = Settings()
    logging.setup("ingest", fmt=settings.log_format, level=settings.log_level)
    try:  # checked before anything starts: a bad catalog is a configuration error
        load_catalog(settings.event_catalog, settings.tzm_script)
    except CatalogError as exc:
        print(f"dihya-ingest: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def _start() -> Stop:
        return await start(settings)

    run(_start)


if __name__ == "__main__":
    main()
