"""``python -m services.ingest``: run the ingest service, configured from the environment."""

from __future__ import annotations

from services.ingest.app import start
from services.ingest.settings import Settings
from shared import logging
from shared.runtime import Stop, run


def main() -> None:
    settings = Settings()
    logging.setup("ingest", fmt=settings.log_format, level=settings.log_level)

    async def _start() -> Stop:
        return await start(settings)

    run(_start)


if __name__ == "__main__":
    main()
