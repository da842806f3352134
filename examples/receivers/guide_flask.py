"""The guide's Flask receiver, kept as it was: it checks ``X-Dihya-Signature`` and nothing else.

It still works unchanged against Dihya — but it accepts a captured delivery replayed at any time,
and during a secret rotation only with the new secret. Prefer ``flask_app.py``. The one change
from the guide: the secret comes from the environment instead of being written in the file.

    DIHYA_WEBHOOK_SECRET=... python guide_flask.py               # PORT=8000, HOST=127.0.0.1
"""

import hashlib
import hmac
import os

from flask import Flask, abort, request

app = Flask(__name__)
SECRET = os.environ["DIHYA_WEBHOOK_SECRET"]


@app.route("/webhook", methods=["POST"])
def webhook():
    signature = request.headers.get("X-Dihya-Signature", "")
    expected = hmac.new(SECRET.encode(), request.data, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        abort(401)
    event = request.get_json()
    print("received", event["event"])
    return "", 200


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
