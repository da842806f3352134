"""The running ingest service serves the web console and tells a token who it is."""

from __future__ import annotations

import pytest

from tests.integration.test_ingest_api import Client

pytestmark = pytest.mark.integration


async def test_ingest_serves_the_console(ingest_sqlite: Client) -> None:
    page = await ingest_sqlite.call("GET", "/console/", token=None)
    assert page.status == 200 and "<main" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    config = await ingest_sqlite.call("GET", "/console/config.json", token=None)
    assert config.body == {"audit_url": None,
                           "languages": ["en", "fr", "ar", "tzm", "tzm-Tfng"]}


async def test_me_names_the_token_and_its_role(ingest_sqlite: Client) -> None:
    admin = await ingest_sqlite.call("GET", "/v1/me")
    assert admin.status == 200
    assert admin.body == {"token_id": "tok_bootstrap_admin", "role": "admin",
                          "tenant": None}
    for role in ("viewer", "auditor", "publisher"):
        issued = await ingest_sqlite.token(role)
        me = await ingest_sqlite.call("GET", "/v1/me", token=issued["token"])
        assert me.status == 200 and me.body == {"token_id": issued["id"], "role": role,
                                                "tenant": None}
    assert (await ingest_sqlite.call("GET", "/v1/me", token=None)).status == 401
    unknown = await ingest_sqlite.call("GET", "/v1/me", token="dihya_nope")
    assert unknown.status == 401 and unknown.body["error"]["code"] == "unauthorized"
