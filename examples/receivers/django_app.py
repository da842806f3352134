"""A Django receiver for Dihya webhooks that also refuses stale and replayed deliveries.

One file: the settings are configured below, so it runs on its own. In your project, copy the
``webhook`` view (and the ``DIHYA_WEBHOOK_SECRETS`` setting) and route ``/webhook`` to it. The
receiver SDK (``pip install ./sdk/python``) checks the Standard Webhooks signature, that the
delivery was signed less than 5 minutes ago (or ahead), and that its nonce was not seen before —
the guide's view (``guide_django.py``) checks ``X-Dihya-Signature`` only and accepts replays.

Run it::

    DIHYA_WEBHOOK_SECRET=whsec_... python django_app.py runserver 8000
    # production: gunicorn django_app:application  (then share the nonce store, see below)

During a secret rotation, set DIHYA_WEBHOOK_SECRET to the new secret and
DIHYA_WEBHOOK_PREVIOUS_SECRET to the old one until the overlap window ends.
"""

from __future__ import annotations

import os
import sys

from dihya_receiver import InMemoryNonceStore, InvalidSignature, VerificationError, verify
from django.conf import settings
from django.core.management import execute_from_command_line
from django.core.management.utils import get_random_secret_key
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

_previous = os.environ.get("DIHYA_WEBHOOK_PREVIOUS_SECRET")
settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or get_random_secret_key(),
    ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(","),
    ROOT_URLCONF=__name__,
    # The current secret, then the previous one while a rotation's overlap lasts.
    DIHYA_WEBHOOK_SECRETS=[os.environ["DIHYA_WEBHOOK_SECRET"], *([_previous] if _previous else [])],
)

TOLERANCE_SECONDS = 5 * 60
# Remembers each nonce until its delivery expires. It lives in this process: with several
# workers or replicas, use a shared store instead (any object with check_and_remember, e.g.
# Redis `SET nonce 1 NX EXAT expires_at`), or a replay sent to another worker gets through.
NONCES = InMemoryNonceStore()


@csrf_exempt  # the signature authenticates the sender; there is no browser session to protect
@require_POST
def webhook(request: HttpRequest) -> JsonResponse:
    try:
        payload = verify(request.body, request.headers, settings.DIHYA_WEBHOOK_SECRETS,
                         tolerance=TOLERANCE_SECONDS, nonce_store=NONCES)
    except InvalidSignature as exc:
        return JsonResponse({"error": str(exc)}, status=401)
    except VerificationError as exc:  # malformed, stale or replayed
        return JsonResponse({"error": str(exc)}, status=400)
    # Your work goes here, idempotently: a retry is signed anew (new nonce) but carries the same
    # payload["id"] (= webhook-id), so you may see an event you already handled.
    return JsonResponse({"received": payload["id"]})


urlpatterns = [path("webhook", webhook)]
application = get_wsgi_application()

if __name__ == "__main__":
    execute_from_command_line(sys.argv)
