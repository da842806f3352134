"""The guide's Django view, kept as it was: it checks ``X-Dihya-Signature`` and nothing else.

It still works unchanged against Dihya — but it accepts a captured delivery replayed at any time,
and during a secret rotation only with the new secret. Prefer ``django_app.py``. Around the
guide's view, just enough settings to run it as one file; the secret comes from the environment
instead of being written in the file.

    DIHYA_WEBHOOK_SECRET=... python guide_django.py runserver 8000
"""

import hashlib
import hmac
import json
import os
import sys

from django.conf import settings
from django.core.management import execute_from_command_line
from django.core.management.utils import get_random_secret_key
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

settings.configure(
    DEBUG=False,
    SECRET_KEY=get_random_secret_key(),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
)
SECRET = os.environ["DIHYA_WEBHOOK_SECRET"]


# --- the guide's view -------------------------------------------------------------------------
@csrf_exempt
def webhook(request):
    signature = request.headers.get("X-Dihya-Signature", "")
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        return HttpResponse(status=401)
    event = json.loads(request.body)
    print("received", event["event"])
    return HttpResponse(status=200)
# -----------------------------------------------------------------------------------------------


urlpatterns = [path("webhook", webhook)]
application = get_wsgi_application()

if __name__ == "__main__":
    execute_from_command_line(sys.argv)
