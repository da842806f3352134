"""``python -m services.signer``: run the signer until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.signer.app import start
from services.signer.settings import ConfigError, Settings
from shared.logging import setup
from shared.runtime import Stop, run


def main() -> None:
    settings = Settings()
    setup("signer", fmt=settings.log_format, level=settings.log_level)
    try:
        settings.cipher()
        settings.headers_cipher()
    except ConfigError as exc:
        print(f"dihya-signer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def _start() -> Stop:
        return await start(settings)

    run(_start)


if __name__ == "__main__":
    main()
