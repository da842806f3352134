"""``python -m services.audit``: run the audit service until SIGTERM/SIGINT."""

from __future__ import annotations

from services.audit.app import start
from services.audit.settings import AuditSettings
from shared.logging import setup
from shared.runtime import Stop, run


def main() -> None:
    settings = AuditSettings()
    setup("audit", fmt=settings.log_format, level=settings.log_level)

    async def _start() -> Stop:
        return await start(settings)

    run(_start)


if __name__ == "__main__":
    main()
