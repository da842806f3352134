"""The demo: the whole system on this machine, events in four languages, verified deliveries.

``bin/demo`` runs this after installing the project. It starts the four services as separate
processes against RabbitMQ, a sample receiver that verifies signatures the guide's way,
registers an endpoint, publishes sample events (fr, en, ar, tzm over HTTP, one more over
AMQP), shows every verified delivery and its audit trail, shows two tenants each receiving only
its own events, then stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import orjson

from demo.receiver import Delivery, Receiver
from launcher.processes import System

SAMPLES = [
    ("fr", "Le modèle « Bienvenue » a été créé."),
    ("en", "The template “Welcome” was created."),
    ("ar", "تم إنشاء القالب «مرحبا»."),
    ("tzm", "Yettwarna template amaynut «Ansuf»."),
]
DETAILS = {lang: text for lang, text in SAMPLES}


def say(text: str = "") -> None:
    print(text, flush=True)


async def broker_reachable(url: str) -> bool:
    try:
        conn = await aio_pika.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


async def ensure_broker(url: str) -> None:
    """Use the broker at ``url``; start a locally installed RabbitMQ if it is down."""
    if await broker_reachable(url):
        return
    if shutil.which("rabbitmq-server"):
        say("RabbitMQ is not answering: starting the local one (rabbitmq-server -detached)…")
        await asyncio.to_thread(subprocess.run, ["rabbitmq-server", "-detached"], check=False)
        for _ in range(60):
            if await broker_reachable(url):
                return
            await asyncio.sleep(1)
    say(
        f"No RabbitMQ at {urlsplit(url).hostname}:{urlsplit(url).port or 5672}. Get one with\n"
        "  sudo apt-get install rabbitmq-server      (Debian/Ubuntu), or\n"
        "  docker run -d -p 5672:5672 rabbitmq:3.13\n"
        "then run the demo again (or point DIHYA_AMQP_URL at your broker)."
    )
    raise SystemExit(2)


@contextlib.contextmanager
def demo_vhost(url: str) -> Any:
    """A throw-away virtual host when ``rabbitmqctl`` is at hand, so the demo leaves no trace."""
    if not shutil.which("rabbitmqctl"):
        yield url
        return
    vhost = f"dihya-demo-{uuid.uuid4().hex[:6]}"
    user = urlsplit(url).username or "guest"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run([*ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
                   check=True, capture_output=True)
    parts = urlsplit(url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", ""))
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], check=False, capture_output=True)


async def api(http: aiohttp.ClientSession, method: str, url: str, token: str,
              body: Any = None) -> Any:
    async with http.request(method, url, json=body,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url} → {resp.status}: {data}")
        return data


WITHOUT_DETAILS: set[str] = set()
"""Ids of the demo's events published without ``details`` (ingest completes them)."""


def show(d: Delivery) -> None:
    body = d.json
    ok = "✔" if d.guide_ok else "✘"
    std = {True: "✔", False: "✘", None: "-"}[d.standard_ok]
    say(f"  {ok} X-Dihya-Signature  {std} webhook-signature   {body['event']:<18} "
        f"lang={body.get('lang') or '-':<3} id={body['id']}")
    details = body["data"].get("details", {})
    if body["id"] in WITHOUT_DETAILS:  # the publisher sent none: the catalog wrote them all
        for lang in ("fr", "en", "ar", "tzm"):
            say(f"      {lang:<3} « {details.get(lang, '(missing)')} »  (from the catalog)")
    elif body.get("lang") in details:
        say(f"      « {details[body['lang']]} »")


async def interrupted() -> None:
    """Return on Ctrl-C or SIGTERM (then the caller stops everything in order)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("\nStopping…")


async def main_async(amqp_url: str, keep: bool, console: bool = False) -> int:
    await ensure_broker(amqp_url)
    with demo_vhost(amqp_url) as url, tempfile.TemporaryDirectory(prefix="dihya-demo-") as tmp:
        system = System(url, Path(tmp))
        receiver = Receiver(on_delivery=show)
        await receiver.start()
        say("Starting the four services (ingest, signer, deliverer, audit)…")
        try:
            await system.start()
            for name in ("ingest", "signer", "deliverer", "audit"):
                say(f"  {name:<9} ready at {system.url(name)}  (log: {system.log_path(name)})")
            code = await run_story(system, receiver, url)
            say(f"\nWeb console: {system.console_url()}")
            if not console:
                say("  (bin/demo --console keeps the system running so you can use it)")
                return code
            say(f"  sign in with this demo's admin token: {system.admin_token}")
            say("  the services keep running until you press Ctrl-C.")
            await interrupted()
            return code
        finally:
            codes = await system.stop()
            await receiver.stop()
            say(f"Stopped: {', '.join(f'{k} exit {v}' for k, v in codes.items())}")
            if keep:
                keep_dir = Path("demo-logs")
                shutil.copytree(tmp, keep_dir, dirs_exist_ok=True)
                say(f"Logs kept in {keep_dir}/")


async def run_story(system: System, receiver: Receiver, amqp_url: str) -> int:
    ingest, audit, admin = system.url("ingest"), system.url("audit"), system.admin_token
    async with aiohttp.ClientSession() as http:
        endpoint = await api(http, "POST", f"{ingest}/v1/endpoints", admin, {
            "url": receiver.url("guide"), "events": ["template.*"],
            "description": "The guide's sample receiver"})
        receiver.secrets["guide"] = endpoint["secret"]
        say(f"\nRegistered endpoint {endpoint['id']} → {endpoint['url']} for template.*")
        auditor = await api(http, "POST", f"{ingest}/v1/tokens", admin, {"role": "auditor"})
        publisher = await api(http, "POST", f"{ingest}/v1/tokens", admin, {"role": "publisher"})

        say("\nPublishing template.created in fr, en, ar and tzm over HTTP, and over AMQP a "
            "template.updated without details (the event-type catalog completes them).")
        # the receiver prints each delivery as it verifies it, often before the last publish
        say("\nDeliveries as the receiver verified them:")
        ids = []
        for lang, _ in SAMPLES:
            event = {"event": "template.created", "lang": lang,
                     "data": {"template_id": f"tpl_{lang}", "user_id": "user42",
                              "details": DETAILS}}
            ids.append((await api(http, "POST", f"{ingest}/v1/events", publisher["token"],
                                  event))["id"])
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            channel = await conn.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("dihya.events")
            amqp_id = f"evt_amqp_{uuid.uuid4().hex[:12]}"
            WITHOUT_DETAILS.add(amqp_id)
            await exchange.publish(aio_pika.Message(orjson.dumps({
                "id": amqp_id, "event": "template.updated", "lang": "en",
                "data": {"template_id": "tpl_welcome", "user_id": "user42"}}),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "template.updated")
            ids.append(amqp_id)

        await receiver.wait(lambda ds: len({d.json["id"] for d in ds}) >= len(ids), 60)
        verified = all(d.guide_ok for d in receiver.received())

        say("\nAudit trail (auditor token):")
        for event_id in ids:
            async def trail(eid: str = event_id) -> list[dict[str, Any]]:
                data = await api(http, "GET", f"{audit}/v1/audit/records?event_id={eid}",
                                 auditor["token"])
                return list(data["records"])

            for _ in range(100):
                records = await trail()
                if any(r["kind"] == "delivery.attempted" for r in records):
                    break
                await asyncio.sleep(0.1)
            say(f"  {event_id}")
            for r in records:
                extra = (f" status={r['status_code']} {r['duration_ms']:.1f} ms {r['outcome']}"
                         if r["kind"] == "delivery.attempted" else "")
                say(f"    {r['occurred_at']}  {r['kind']:<20}{extra}")
        separated = await tenants_story(http, ingest, admin, publisher["token"], receiver)
        verified = verified and separated
    say(f"\n{'All deliveries verified.' if verified else 'SOME DELIVERIES FAILED VERIFICATION.'}")
    return 0 if verified else 1


async def tenants_story(http: aiohttp.ClientSession, ingest: str, admin: str, publisher: str,
                        receiver: Receiver) -> bool:
    """Two of the platform's customers, each with its own endpoint: an event for one reaches
    only that one, and each customer's token sees only its own endpoint (docs/tenants.md)."""
    say("\nTwo customers (tenants), Acme and Globex, each subscribed to invoice.*:")
    seen: dict[str, list[str]] = {}
    for name in ("acme", "globex"):
        tenant = await api(http, "POST", f"{ingest}/v1/tenants", admin,
                           {"name": name.title(), "external_id": f"{name}-{uuid.uuid4().hex[:6]}"})
        endpoint = await api(http, "POST", f"{ingest}/v1/endpoints", admin, {
            "url": receiver.url(name), "events": ["invoice.*"], "tenant": tenant["id"]})
        receiver.secrets[name] = endpoint["secret"]
        token = await api(http, "POST", f"{ingest}/v1/tokens", admin,
                          {"role": "tenant_viewer", "tenant": tenant["external_id"]})
        own = await api(http, "GET", f"{ingest}/v1/endpoints", token["token"])
        seen[name] = [e["id"] for e in own["items"]]
        event = await api(http, "POST", f"{ingest}/v1/events", publisher, {
            "event": "invoice.paid", "tenant": tenant["external_id"],
            "data": {"invoice_id": f"in_{name}"}})
        say(f"  {tenant['name']:<7} {tenant['id']} (external id {tenant['external_id']}): "
            f"endpoint {endpoint['id']}, event {event['id']}; its own token sees "
            f"{len(own['items'])} endpoint")
    got = await receiver.wait(lambda ds: {d.path for d in ds} >= {"acme", "globex"}, 60)
    # a set: a redelivered copy (same id) is fine, another customer's invoice is not
    invoices = {(d.path, d.json["data"]["invoice_id"]) for d in got if d.path in seen}
    separated = invoices == {("acme", "in_acme"), ("globex", "in_globex")} and all(
        len(ids) == 1 for ids in seen.values())
    say("  Each received only its own invoice." if separated
        else f"  TENANTS NOT SEPARATED: {invoices}")
    return separated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--amqp-url", default=os.environ.get(
        "DIHYA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy the services' logs to ./demo-logs/")
    parser.add_argument("--console", action="store_true",
                        help="after the story, keep the system running and print how to sign "
                             "in to the web console (Ctrl-C stops)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args.amqp_url, args.keep_logs, args.console)))


if __name__ == "__main__":
    main()
