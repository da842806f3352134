"""The event-type catalog on the real broker: a publisher's one language reaches a real receiver
in four, over HTTP and over AMQP; unknown types pass unchanged or are refused, as configured.

Signer and deliverer run in this process for the whole module; each test starts its own ingest
(the catalog policy is ingest's setting). The receiver is a real aiohttp server on 127.0.0.1
that checks each signature the guide's way.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from cryptography.fernet import Fernet

from cli.errors import Exit
from cli.main import run
from demo.receiver import Delivery, Receiver
from services.deliverer.app import start as start_deliverer
from services.deliverer.settings import Settings as DelivererSettings
from services.ingest.catalog import bundled
from services.ingest.decisions import event_id_for
from services.signer.app import start as start_signer
from services.signer.settings import Settings as SignerSettings
from shared import topology
from tests.conftest import free_port
from tests.integration.test_ingest_api import ADMIN, Client, Observer, running_ingest
from tests.integration.test_ingest_events import publish_raw, take_parked

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def receiver(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[Receiver]:
    """The receiver, with a signer and a deliverer running behind whichever ingest a test
    starts."""
    workdir = tmp_path_factory.mktemp("catalog")
    signer = SignerSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "master_key": Fernet.generate_key().decode(),
        "database_url": f"sqlite:///{workdir}/signer.db", "shutdown_grace": 2.0})
    deliverer = DelivererSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "allowed_networks": "127.0.0.0/8",
        "shutdown_grace": 2.0})
    rec = Receiver()
    await rec.start()
    stops = [await start_signer(signer), await start_deliverer(deliverer)]
    try:
        yield rec
    finally:
        for stop in reversed(stops):
            await stop()
        await rec.stop()


@contextlib.asynccontextmanager
async def ingest_for(amqp_url: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Client]:
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/ingest.db",
                              allowed_networks="127.0.0.0/8", **overrides) as client:
        yield client


async def subscribe(ingest: Client, receiver: Receiver, events: list[str]) -> str:
    """A fresh receiver path subscribed to ``events``; returns the path's name."""
    name = f"cat-{uuid.uuid4().hex[:8]}"
    ep = await ingest.endpoint(events, url=receiver.url(name))
    receiver.secrets[name] = ep["secret"]
    return name


async def delivered(receiver: Receiver, name: str, ids: set[str]) -> dict[str, Delivery]:
    got = await receiver.wait(lambda ds: ids <= {d.json["id"] for d in ds if d.path == name})
    out = {d.json["id"]: d for d in got if d.path == name and d.json["id"] in ids}
    assert all(d.guide_ok for d in out.values()), "every delivery verifies the guide's way"
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def rendered(kind: str, data: dict[str, Any]) -> dict[str, str | None]:
    templates = bundled().templates(kind)
    assert templates is not None
    return {lang: t.render(data) for lang, t in templates.items()}


async def test_one_language_in_four_languages_out_over_http_and_amqp(
    receiver: Receiver, amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection
) -> None:
    async with ingest_for(amqp_url, tmp_path) as ingest:
        name = await subscribe(ingest, receiver, ["template.*", "order.#"])
        over_http = await ingest.call("POST", "/v1/events", json={
            "event": "template.created", "lang": "fr",
            "data": {"template_id": "abc123", "user_id": "user42",
                     "details": {"fr": "Mon texte à moi"}}})
        assert over_http.status == 202, over_http.text
        amqp_id = f"evt_cat_{uuid.uuid4().hex[:10]}"
        await publish_raw(broker, "template.updated", orjson.dumps({
            "id": amqp_id, "event": "template.updated", "lang": "ar",
            "data": {"template_id": "t9", "user_id": "u7", "details": "نص الناشر"}}))
        unknown = {"event": "order.paid", "lang": "en",
                   "data": {"order_id": "o1", "details": {"en": "Order o1 paid"}}}
        as_sent = await ingest.call("POST", "/v1/events", json=unknown)
        assert as_sent.status == 202

        got = await delivered(receiver, name, {over_http.body["id"], amqp_id,
                                               as_sent.body["id"]})

    http_body = got[over_http.body["id"]].json
    assert http_body["data"]["details"] == {
        "fr": "Mon texte à moi",  # the publisher's own text wins
        "en": "Template abc123 created by user42.",
        "ar": "أنشأ المستخدم user42 القالب abc123.",
        "tzm": "Template abc123 yettwarna sɣur user42.",  # Latin script, as the guide
    }
    assert http_body["lang"] == "fr" and http_body["data"]["template_id"] == "abc123"

    amqp_body = got[amqp_id].json
    expected = rendered("template.updated", {"template_id": "t9", "user_id": "u7"})
    assert amqp_body["data"]["details"] == {**expected, "ar": "نص الناشر"}
    assert amqp_body["data"]["details"]["en"] == "Template t9 changed by u7."

    # accept (the default): a type the catalog does not know is delivered as it was sent
    assert got[as_sent.body["id"]].json["data"] == unknown["data"]


async def test_refuse_mode_422_over_http_parked_and_audited_over_amqp(
    receiver: Receiver, amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, [(topology.AUDIT_EXCHANGE, "event.rejected"),
                                        (topology.EVENTS_EXCHANGE, "#")])
    async with ingest_for(amqp_url, tmp_path, unknown_event_types="refuse") as ingest:
        name = await subscribe(ingest, receiver, ["#"])
        refused = await ingest.call("POST", "/v1/events",
                                    json={"event": "order.refused", "data": {}})
        assert refused.status == 422, refused.text
        error = refused.body["error"]
        assert error["code"] == "unknown_event_type"
        assert error["fields"] == [{"field": "event",
                                    "message": "not in the event-type catalog"}]
        assert "DIHYA_INGEST_UNKNOWN_EVENT_TYPES" in error["message"]

        run = uuid.uuid4().hex
        body = orjson.dumps({"event": "order.parked", "lang": "fr",
                             "data": {"details": {"fr": "x"}}})
        await publish_raw(broker, "order.parked", body, message_id=f"m-{run}",
                          headers={"x-test": run})

        # known types, and the platform's own, still flow (and are completed)
        known = await ingest.call("POST", "/v1/events", json={
            "event": "template.deleted", "data": {"template_id": "t1", "user_id": "u1"}})
        probe = await ingest.call("POST", "/v1/events", json={
            "event": "dihya.test", "lang": "en", "data": {"test": True}})
        assert known.status == probe.status == 202
        got = await delivered(receiver, name, {known.body["id"], probe.body["id"]})
        assert got[known.body["id"]].json["data"]["details"] == rendered(
            "template.deleted", {"template_id": "t1", "user_id": "u1"})
        assert set(got[probe.body["id"]].json["data"]["details"]) == {"fr", "en", "ar", "tzm"}

        event_id = event_id_for(None, f"m-{run}")
        await obs.wait(lambda _: bool(obs.facts("event.rejected", event_id=event_id)))
        [fact] = obs.facts("event.rejected", event_id=event_id)
        assert fact["reason"] == "unknown_event_type" and fact["event_type"] == "order.parked"
        assert fact["service"] == "ingest" and "not in the event-type catalog" in fact["error"]

    parked = await take_parked(
        broker, lambda m: "mine" if _text((m.headers or {}).get("x-test", "")) == run else None,
        {"mine"})
    headers = parked["mine"].headers or {}
    assert _text(headers[topology.REASON_HEADER]) == "unknown_event_type"
    assert "DIHYA_INGEST_UNKNOWN_EVENT_TYPES" in _text(headers[topology.ERROR_HEADER])
    assert parked["mine"].body == body  # kept verbatim for an operator
    # the refused HTTP event never reached the events exchange: ingest publishes on one
    # channel, so once a later event is seen there, an earlier one would have been too
    await obs.wait(lambda _: any(m.json.get("id") == probe.body["id"]
                                 for m in obs.on(topology.EVENTS_EXCHANGE)))
    assert [m.json for m in obs.on(topology.EVENTS_EXCHANGE)
            if m.json.get("event") == "order.refused"] == []
    assert not any(d.json["event"] in ("order.refused", "order.parked")
                   for d in receiver.received(name))


async def test_the_catalog_api_lists_types_in_four_languages_for_every_role(
    ingest_sqlite: Client
) -> None:
    ingest = ingest_sqlite
    for role in ("viewer", "publisher", "auditor"):
        token = (await ingest.token(role))["token"]
        reply = await ingest.call("GET", "/v1/event-types", token=token)
        assert reply.status == 200, (role, reply.text)
    assert (await ingest.call("GET", "/v1/event-types", token=None)).status == 401
    reply = await ingest.call("GET", "/v1/event-types")
    assert reply.body["unknown_event_types"] == "accept"
    items = {item["event"]: item for item in reply.body["items"]}
    assert set(items) == set(bundled().types)
    created = items["template.created"]
    assert created["description"]["fr"] == "Un modèle a été créé."
    assert set(created["description"]) == set(created["details"]) == {"fr", "en", "ar", "tzm"}
    assert created["placeholders"] == ["template_id", "user_id"]
    assert created["internal"] is False and items["endpoint.disabled"]["internal"] is True
    # every Arabic and Tamazight text still says it awaits a native speaker's review
    assert {tuple(i["awaiting_native_review"]) for i in items.values()} == {("ar", "tzm")}


async def test_the_cli_lists_the_catalog_in_the_users_language(ingest_sqlite: Client) -> None:
    env = {"DIHYA_INGEST_URL": ingest_sqlite.base, "DIHYA_TOKEN": ADMIN, "HOME": "/nonexistent",
           "LANG": "C.UTF-8"}

    async def dihya(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, list(argv), env=env, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = await dihya("--lang", "fr", "event-types", "list")
    assert code == Exit.OK, err
    assert out.splitlines()[0].split() == ["TYPE", "DESCRIPTION", "CLÉS", "DATA", "ÉMIS", "PAR"]
    row = next(line for line in out.splitlines() if line.startswith("template.created "))
    assert "Un modèle a été créé." in row and "template_id, user_id" in row
    assert "plateforme" in row
    assert "Dihya" in next(line for line in out.splitlines() if line.startswith("dihya.test "))
    assert "DIHYA_INGEST_UNKNOWN_EVENT_TYPES=accept" in err
    assert "*" not in out and "relecture" not in err  # French texts need no review

    code, out, err = await dihya("--lang", "tzm", "event-types", "list")
    assert code == Exit.OK and "Yettwarna template amaynut. *" in out
    assert "asenqed n umsawal" in err
    code, out, err = await dihya("--lang", "ar", "event-types", "list")
    assert code == Exit.OK and "تم إنشاء قالب. *" in out and "مراجعة متحدث أصلي" in err

    code, out, _ = await dihya("event-types", "list", "--json")
    assert code == Exit.OK
    listed = orjson.loads(out)
    assert {i["event"] for i in listed["items"]} == set(bundled().types)
    assert listed["unknown_event_types"] == "accept"
