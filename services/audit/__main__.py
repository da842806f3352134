"""``python -m services.audit``: run the audit service until SIGTERM/SIGINT."""

from __future__ import annotations

import structlog

from services.audit.app import StartRefusedError, start
from services.audit.settings import AuditSettings
from shared.logging import setup
from shared.runtime import Stop, run


def main() -> None:
    settings = AuditSettings()
    setup("audit", fmt=settings.log_format, level=settings.log_level)

    async def _start() -> Stop:
        return await start(settings)

    try:
        run(_start)
    except StartRefusedError as exc:
        structlog.get_logger("dihya.audit").error("start_refused", reason=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
