"""``python -m services.deliverer``: run the deliverer until SIGTERM/SIGINT."""

from __future__ import annotations

from services.deliverer.app import start
from services.deliverer.settings import Settings
from shared.logging import setup
from shared.runtime import Stop, run


def main() -> None:
    settings = Settings()
    setup("deliverer", fmt=settings.log_format, level=settings.log_level)

    async def _start() -> Stop:
        return await start(settings)

    run(_start)


if __name__ == "__main__":
    main()
