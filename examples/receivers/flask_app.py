"""A Flask receiver for Dihya webhooks that also refuses stale and replayed deliveries.

The guide's Flask receiver (``guide_flask.py``) checks ``X-Dihya-Signature`` only, so anyone who
captured one delivery can POST it again, today or next year. This one lets the receiver SDK
(``pip install ./sdk/python``) check the Standard Webhooks signature, that the delivery was signed
less than 5 minutes ago (or ahead), and that its nonce was not seen before.

Run it::

    DIHYA_WEBHOOK_SECRET=whsec_... python flask_app.py          # PORT=8000, HOST=127.0.0.1
    # production: gunicorn 'flask_app:create_app()'  (then share the nonce store, see below)

During a secret rotation, set DIHYA_WEBHOOK_SECRET to the new secret and
DIHYA_WEBHOOK_PREVIOUS_SECRET to the old one until the overlap window ends.
"""

from __future__ import annotations

import os

from dihya_receiver import InMemoryNonceStore, InvalidSignature, VerificationError, verify
from flask import Flask, Response, jsonify, request

TOLERANCE_SECONDS = 5 * 60


def secrets_from_env() -> list[str]:
    """The current secret, then the previous one while a rotation's overlap lasts."""
    current = os.environ["DIHYA_WEBHOOK_SECRET"]
    previous = os.environ.get("DIHYA_WEBHOOK_PREVIOUS_SECRET")
    return [current, previous] if previous else [current]


def create_app() -> Flask:
    app = Flask(__name__)
    secrets = secrets_from_env()
    # Remembers each nonce until its delivery expires. It lives in this process: with several
    # workers or replicas, pass a shared store instead (any object with check_and_remember, e.g.
    # Redis `SET nonce 1 NX EXAT expires_at`), or a replay sent to another worker gets through.
    nonces = InMemoryNonceStore()

    @app.post("/webhook")
    def webhook() -> tuple[Response, int]:
        try:
            payload = verify(request.get_data(), request.headers, secrets,
                             tolerance=TOLERANCE_SECONDS, nonce_store=nonces)
        except InvalidSignature as exc:
            return jsonify(error=str(exc)), 401
        except VerificationError as exc:  # malformed, stale or replayed
            return jsonify(error=str(exc)), 400
        # Your work goes here, idempotently: a retry is signed anew (new nonce) but carries the
        # same payload["id"] (= webhook-id), so you may see an event you already handled.
        app.logger.info("event %s %s", payload["id"], payload["event"])
        return jsonify(received=payload["id"]), 200

    return app


if __name__ == "__main__":
    create_app().run(host=os.environ.get("HOST", "127.0.0.1"),
                     port=int(os.environ.get("PORT", "8000")))
