"""An aiohttp receiver for Dihya webhooks that refuses forged, stale and replayed deliveries.

The receiver SDK (``pip install ./sdk/python``) checks the Standard Webhooks signature, that the
delivery was signed less than 5 minutes ago (or ahead), and that its nonce was not seen before.

Run it::

    DIHYA_WEBHOOK_SECRET=whsec_... python aiohttp_app.py        # PORT=8000, HOST=127.0.0.1

During a secret rotation, set DIHYA_WEBHOOK_SECRET to the new secret and
DIHYA_WEBHOOK_PREVIOUS_SECRET to the old one until the overlap window ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from aiohttp import web
from dihya_receiver import InMemoryNonceStore, InvalidSignature, VerificationError, verify

TOLERANCE_SECONDS = 5 * 60


def secrets_from_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The current secret, then the previous one while a rotation's overlap lasts."""
    current = environ["DIHYA_WEBHOOK_SECRET"]
    previous = environ.get("DIHYA_WEBHOOK_PREVIOUS_SECRET")
    return [current, previous] if previous else [current]


def create_app(secrets: Sequence[str]) -> web.Application:
    # Remembers each nonce until its delivery expires. It lives in this process: with several
    # replicas, pass a shared store instead (any object with check_and_remember, e.g. Redis
    # `SET nonce 1 NX EXAT expires_at`), or a replay sent to another replica gets through.
    nonces = InMemoryNonceStore()

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()  # the raw bytes: the signature covers them exactly
        try:
            payload = verify(body, request.headers, list(secrets),
                             tolerance=TOLERANCE_SECONDS, nonce_store=nonces)
        except InvalidSignature as exc:
            return web.json_response({"error": str(exc)}, status=401)
        except VerificationError as exc:  # malformed, stale or replayed
            return web.json_response({"error": str(exc)}, status=400)
        # Your work goes here, idempotently: a retry is signed anew (new nonce) but carries the
        # same payload["id"] (= webhook-id), so you may see an event you already handled.
        return web.json_response({"received": payload["id"]})

    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/webhook", webhook)
    return app


if __name__ == "__main__":
    web.run_app(create_app(secrets_from_env()), host=os.environ.get("HOST", "127.0.0.1"),
                port=int(os.environ.get("PORT", "8000")))
