"""The web console end to end: Debian's Chromium, headless, driven by Playwright, against the
four real services and a real receiver that verifies every signature.

Nothing is downloaded: Playwright launches the system's ``/usr/bin/chromium`` through
``executable_path``. Without that browser the tests are skipped, except under CI (``CI`` set),
where a missing browser fails them. Screenshots go to ``build/screenshots/console/`` (or
``$DIHYA_TEST_ARTIFACTS/screenshots/console/``); the last test checks they were written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from demo.receiver import Receiver
from launcher.processes import System
from tests.conftest import wait_for
from tests.e2e.conftest import Api

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page, Request

CHROMIUM = Path(os.environ.get("DIHYA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = (Path(os.environ["DIHYA_TEST_ARTIFACTS"]) if os.environ.get("DIHYA_TEST_ARTIFACTS")
         else ROOT / "build") / "screenshots" / "console"
STARTED = time.time()
WRITTEN: list[Path] = []
WAIT_MS = 20_000


def _need_browser() -> None:
    """Skip without Chromium or Playwright, except in CI, where their absence is a failure."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"console end-to-end tests need a browser in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    _need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@dataclass
class Tab:
    """One browser context and page, with everything it requested and printed."""

    page: Page
    system: System
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_private(self, *secrets: str) -> None:
        """No token or secret in any URL the page requested or anything it printed, and
        nothing requested from anywhere but this machine."""
        hosts = {urlsplit(u).hostname for u in self.requests if not u.startswith(("blob:",
                                                                                  "data:"))}
        assert hosts == {"127.0.0.1"}, hosts
        for secret in (self.system.admin_token, *secrets):
            assert not any(secret in u for u in self.requests)
            assert not any(secret in line for line in self.console)
        assert self.errors == []
        assert not any("Content Security Policy" in line for line in self.console), self.console


@pytest.fixture
async def tab(browser: Browser, system: System) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860},
                                        locale="en-US", accept_downloads=True)
    await context.grant_permissions(["clipboard-read", "clipboard-write"],
                                    origin=system.url("ingest"))
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    out = Tab(page, system)

    def on_request(request: Request) -> None:
        out.requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        out.console.append(message.text)

    context.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: out.errors.append(str(exc)))
    await page.goto(system.console_url())
    await page.locator("body[data-ready]").wait_for()
    yield out
    await context.close()


async def sign_in(page: Page, token: str) -> None:
    from playwright.async_api import expect

    await page.fill("#token", token)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#signout")).to_be_visible()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    WRITTEN.append(path)


async def new_token(api: Api, role: str) -> dict[str, Any]:
    _, token = await api.call("POST", "ingest", "/v1/tokens", api.system.admin_token,
                              {"role": role, "description": f"console e2e {role}"}, expect=201)
    return dict(token)


async def audit_knows(api: Api, token: str) -> None:
    """Wait until the audit service has learnt ``token`` (a TokenGrant on the control bus)."""
    async def accepted() -> bool:
        status, _ = await api.call("GET", "audit", "/v1/audit/verify", token)
        return status == 200

    await wait_for(accepted, timeout=20)


async def read_text(path: Path) -> str:
    return await asyncio.to_thread(Path(path).read_text, "utf-8")


def one(received: list[Any], predicate: Callable[[Any], bool]) -> Any:
    hits = [d for d in received if predicate(d)]
    assert len(hits) == 1, hits
    return hits[0]


async def test_admin_creates_tests_rotates_edits_and_disables_an_endpoint(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    await sign_in(page, admin)
    await expect(page.locator("#whoami")).to_contain_text("administrator")
    await expect(page.locator("h1#endpoints-title")).to_be_focused()

    # create: the secret is shown once, with a copy button and a clear warning
    await page.click("#endpoint-new")
    await expect(page.locator("#endpoint-dialog")).to_be_visible()
    await page.fill("#ep-url", receiver.url("console-ok"))
    await page.fill("#ep-events", "console.created")
    await page.fill("#ep-description", "Console e2e")
    await page.click("#endpoint-form button[type=submit]")
    secret_dialog = page.locator("#secret-dialog")
    await expect(secret_dialog).to_be_visible()
    await expect(page.locator("#secret-warning")).to_contain_text("you will not see it again")
    secret = await page.input_value("#secret-value")
    assert secret.startswith("whsec_")
    await page.click("#secret-copy")
    await expect(page.locator("#status")).to_have_text("Secret copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await page.click("#secret-done")
    await expect(secret_dialog).to_be_hidden()
    assert await page.input_value("#secret-value") == ""  # once means once
    receiver.secrets["console-ok"] = secret
    await expect(page.locator("#endpoint-facts")).to_contain_text("console.created")
    endpoint_id = page.url.rsplit("/", 1)[-1]
    assert endpoint_id.startswith("ep_")

    # test event: the receiver verifies the signature with the secret the console showed
    await page.click("#endpoint-test")
    await receiver.wait(lambda ds: any(d.path == "console-ok" for d in ds))
    first = one(receiver.received("console-ok"), lambda d: True)
    assert first.guide_ok and first.standard_ok is not False
    assert first.json["event"] == "dihya.test" and first.json["data"]["test"] is True
    assert set(first.json["data"]["details"]) == {"en", "fr", "ar", "tzm"}
    summary = page.locator("#test-summary")
    await expect(summary).to_have_text("Delivered: the receiver answered 200.")
    await expect(page.locator("#test-facts")).to_contain_text(first.json["delivery"]["id"])
    row = page.locator(f"#attempts-table tr[data-delivery='{first.json['delivery']['id']}']")
    await expect(row).to_contain_text("200")
    await expect(row).to_contain_text("delivered")
    _, ep = await api.call("GET", "ingest", f"/v1/endpoints/{endpoint_id}", admin, expect=200)
    assert ep["events"] == ["console.created"]  # the test subscription was taken back
    await shot(page, "endpoint-en")

    # rotate: confirmed, the new secret shown once; the next delivery verifies with it
    await page.click("#endpoint-rotate")
    await expect(page.locator("#confirm-dialog")).to_be_visible()
    await page.click("#confirm-yes")
    await expect(secret_dialog).to_be_visible()
    await expect(page.locator("#secret-valid")).to_contain_text("previous secret")
    rotated = await page.input_value("#secret-value")
    assert rotated.startswith("whsec_") and rotated != secret
    await page.click("#secret-done")
    receiver.secrets["console-ok"] = rotated
    await page.click("#endpoint-test")
    await receiver.wait(lambda ds: sum(d.path == "console-ok" for d in ds) == 2)
    second = receiver.received("console-ok")[-1]
    assert second.guide_ok, "X-Dihya-Signature is made with the newest secret"
    await expect(page.locator("#test-facts")).to_contain_text(second.json["delivery"]["id"])
    await expect(summary).to_have_text("Delivered: the receiver answered 200.")

    # edit, then disable
    await page.click("#endpoint-edit")
    await expect(page.locator("#ep-description")).to_have_value("Console e2e")
    await page.fill("#ep-description", "Edited in the console")
    await page.select_option("#ep-ordering", "fifo")  # an ordered endpoint (docs/ordering.md)
    await page.fill("#ep-ordering-key", "data.user_id")
    await page.click("#endpoint-form button[type=submit]")
    await expect(page.locator("#endpoint-facts")).to_contain_text("Edited in the console")
    await expect(page.locator("#endpoint-facts")).to_contain_text("FIFO, key data.user_id")
    await page.click("#endpoint-toggle")
    await expect(page.locator("#endpoint-facts")).to_contain_text(
        "disabled (by an administrator)")
    await expect(page.locator("#endpoint-toggle")).to_have_text("Enable")
    await expect(page.locator("#endpoint-test")).to_be_disabled()
    _, ep = await api.call("GET", "ingest", f"/v1/endpoints/{endpoint_id}", admin, expect=200)
    assert (ep["status"], ep["description"]) == ("disabled", "Edited in the console")
    assert (ep["ordering"], ep["ordering_key"]) == ("fifo", "data.user_id")
    tab.assert_private(secret, rotated)


async def test_a_failed_delivery_shows_its_attempts_and_is_retried(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    receiver.statuses["console-down"] = [503]
    _, ep = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("console-down"), "events": ["console.down"],
        "retry_schedule": [], "description": "answers 503 once"}, expect=201)
    receiver.secrets["console-down"] = ep["secret"]
    await api.publish({"event": "console.down", "data": {"order": 42}})

    async def failed() -> list[dict[str, Any]]:
        _, page_ = await api.call("GET", "ingest", f"/v1/endpoints/{ep['id']}/deliveries",
                                  admin, expect=200)
        return list(page_["items"])

    await wait_for(failed, timeout=20)
    [stored] = await failed()

    # The attempts table reads the audit log, which trails the delivery state by its batch
    # waits: open the page once the attempt is audited, as the second attempt does below.
    async def first_attempt_audited() -> bool:
        return any(r["attempt"] == 1 for r in await api.records(
            delivery_id=stored["delivery_id"], kind="delivery.attempted"))

    await wait_for(first_attempt_audited, timeout=20)
    await sign_in(page, admin)
    await page.click(f"#endpoints-table a[href='#/endpoints/{ep['id']}']")
    dead = page.locator(f"#failed-table tr[data-delivery='{stored['delivery_id']}']")
    await expect(dead).to_contain_text("exhausted")
    await expect(dead).to_contain_text("503")
    attempt = page.locator(f"#attempts-table tr[data-delivery='{stored['delivery_id']}']")
    await expect(attempt).to_contain_text("503")
    await expect(attempt).to_contain_text("given up (exhausted)")
    await shot(page, "deliveries-en")

    await dead.get_by_role("button", name=f"Retry delivery {stored['delivery_id']}").click()
    await expect(page.locator("#status")).to_have_text(
        f"Delivery {stored['delivery_id']} sent again as attempt 2.")
    await expect(dead).to_be_hidden()  # no longer failed
    await receiver.wait(lambda ds: sum(d.path == "console-down" for d in ds) == 2)
    again = receiver.received("console-down")[-1]
    assert again.headers["X-Dihya-Attempt"] == "2" and again.guide_ok and again.status == 200

    async def second_attempt_audited() -> bool:
        return any(r["attempt"] == 2 for r in await api.records(
            delivery_id=stored["delivery_id"], kind="delivery.attempted"))

    await wait_for(second_attempt_audited, timeout=20)
    await page.click("#attempts-form button[type=submit]")
    await expect(page.locator(
        f"#attempts-table tr[data-delivery='{stored['delivery_id']}'][data-attempt='2']"
    )).to_contain_text("200")
    tab.assert_private(ep["secret"])


async def test_arabic_is_right_to_left_and_every_language_is_chosen_by_the_user(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    _, ep = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("console-ar"), "events": ["template.*"],
        "description": "نقطة استقبال تجريبية"}, expect=201)
    await sign_in(page, admin)
    html = page.locator("html")
    await expect(html).to_have_attribute("dir", "ltr")
    await page.select_option("#lang", "ar")
    await expect(html).to_have_attribute("dir", "rtl")
    await expect(html).to_have_attribute("lang", "ar")
    await expect(page.locator("#nav-endpoints")).to_have_text("نقاط الاستقبال")
    await expect(page.locator("#endpoints-title")).to_have_text("نقاط الاستقبال")
    await expect(page.locator("label[for=lang]")).to_have_text("اللغة")

    # the layout really mirrors: the brand is on the right, the first column is rightmost
    brand = await page.locator(".brand").bounding_box()
    tools = await page.locator(".tools").bounding_box()
    assert brand and tools and brand["x"] > tools["x"]
    headers = page.locator("#endpoints-table thead th")
    first, second = await headers.nth(0).bounding_box(), await headers.nth(1).bounding_box()
    assert first and second and first["x"] > second["x"]
    await shot(page, "endpoints-ar")

    await page.click(f"#endpoints-table a[href='#/endpoints/{ep['id']}']")
    await expect(page.locator("#endpoint-toggle")).to_have_text("تعطيل")
    await expect(page.locator("#attempts-title")).to_have_text("محاولات التسليم")
    await shot(page, "endpoint-ar")

    # the choice is remembered (this browser), the sign-in too (this tab)
    await page.reload()
    await expect(html).to_have_attribute("dir", "rtl")
    await expect(page.locator("#signout")).to_have_text("تسجيل الخروج")
    # Tamazight: Latin script by default (as the guide writes it), Tifinagh on request
    for lang, tag, title, direction in (
            ("tzm", "tzm-Latn", "Tinqqitin n umẓaẓ", "ltr"),
            ("tzm-Tfng", "tzm-Tfng", "ⵜⵉⵏⵇⵇⵉⵜⵉⵏ ⵏ ⵓⵎⵥⴰⵥ", "ltr"),  # noqa: RUF001
            ("fr", "fr", "Points de terminaison", "ltr")):
        await page.select_option("#lang", lang)
        await expect(html).to_have_attribute("lang", tag)
        await expect(html).to_have_attribute("dir", direction)
        await expect(page.locator("#nav-endpoints")).to_have_text(title)
    await page.click("#nav-endpoints")
    await shot(page, "endpoints-fr")

    # signing out forgets the token
    await page.click("#signout")
    await expect(page.locator("#view-signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.evaluate("localStorage.getItem('dihya.console.lang')") == "fr"
    tab.assert_private(ep["secret"])


async def test_an_auditor_browses_verifies_and_exports_the_audit_log(
    tab: Tab, api: Api
) -> None:
    from playwright.async_api import expect

    page = tab.page
    auditor = await new_token(api, "auditor")
    await audit_knows(api, auditor["token"])
    await sign_in(page, auditor["token"])
    await expect(page.locator("#whoami")).to_contain_text("auditor")
    await expect(page.locator("#nav-endpoints")).to_be_hidden()
    await expect(page.locator("#nav-audit")).to_have_attribute("aria-current", "page")
    rows = page.locator("#audit-table tbody tr")
    await expect(rows.first).to_be_visible()

    await page.select_option("#audit-kind", "endpoint.created")
    await page.click("#audit-form button[type=submit]")
    kind_cells = page.locator("#audit-table tbody tr td:nth-child(3) code.nowrap")
    await expect(kind_cells.filter(has_not_text="endpoint.created")).to_have_count(0)
    kinds = await kind_cells.all_inner_texts()
    assert kinds and set(kinds) == {"endpoint.created"}
    shown = [int(x) for x in await page.locator("#audit-table tbody th").all_inner_texts()]
    assert shown == sorted(shown, reverse=True)  # newest first
    # details read as names and values, not a JSON blob
    await expect(page.locator("#audit-table tbody tr").first.locator("dl.details")).to_contain_text(
        "events")

    await page.click("#audit-verify")
    await expect(page.locator("#audit-verdict")).to_contain_text("The chain is intact")
    await shot(page, "audit-en")

    async with page.expect_download() as jsonl_info:
        await page.click("#audit-export-jsonl")
    jsonl = await jsonl_info.value
    assert jsonl.suggested_filename.endswith(".jsonl")
    lines = (await read_text(await jsonl.path())).splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(kinds)
    assert {r["kind"] for r in records} == {"endpoint.created"}
    async with page.expect_download() as csv_info:
        await page.click("#audit-export-csv")
    csv_text = await read_text(await (await csv_info.value).path())
    assert csv_text.splitlines()[0].startswith("seq,") and len(csv_text.splitlines()) == len(
        kinds) + 1
    await expect(page.locator("#status")).to_contain_text("CSV export downloaded")
    tab.assert_private(auditor["token"])


async def test_a_viewer_reads_but_cannot_change(tab: Tab, api: Api, receiver: Receiver) -> None:
    from playwright.async_api import expect

    page = tab.page
    _, ep = await api.call("POST", "ingest", "/v1/endpoints", api.system.admin_token, {
        "url": receiver.url("console-view"), "events": ["view.only"]}, expect=201)
    viewer = await new_token(api, "viewer")
    await sign_in(page, viewer["token"])
    await expect(page.locator("#endpoints-readonly")).to_be_visible()
    await expect(page.locator("#endpoint-new")).to_be_hidden()
    await expect(page.locator("#nav-audit")).to_be_hidden()
    await page.click(f"#endpoints-table a[href='#/endpoints/{ep['id']}']")
    await expect(page.locator("#endpoint-facts")).to_contain_text("view.only")
    await expect(page.locator("#endpoint-actions")).to_be_hidden()
    await expect(page.locator("#attempts-off")).to_contain_text("your role cannot read")
    tab.assert_private(viewer["token"], ep["secret"])


async def test_a_publisher_is_told_the_console_has_nothing_for_it(tab: Tab, api: Api) -> None:
    from playwright.async_api import expect

    publisher = await new_token(api, "publisher")
    await sign_in(tab.page, publisher["token"])
    await expect(tab.page.locator("#view-empty")).to_be_visible()
    await expect(tab.page.locator("#empty-text")).to_contain_text("can only publish events")
    await expect(tab.page.locator("#nav-endpoints")).to_be_hidden()
    await expect(tab.page.locator("#nav-audit")).to_be_hidden()
    tab.assert_private(publisher["token"])


async def tab_to(page: Page, selector: str, limit: int = 40, back: bool = False) -> None:
    """Press Tab (Shift+Tab) until ``selector`` has the focus, as a keyboard user would."""
    for _ in range(limit):
        if await page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
        await page.keyboard.press("Shift+Tab" if back else "Tab")
    raise AssertionError(f"{selector} never got the focus with the keyboard")


async def test_the_keyboard_alone_signs_in_creates_and_deletes_an_endpoint(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    await tab_to(page, "#token")
    await page.keyboard.type(admin)
    await page.keyboard.press("Enter")
    await expect(page.locator("#signout")).to_be_visible()

    await tab_to(page, "#endpoint-new")
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "the focus is visible"
    await page.keyboard.press("Enter")
    await expect(page.locator("#ep-url")).to_be_focused()
    await page.keyboard.type(receiver.url("console-keys"))
    await page.keyboard.press("Tab")
    await expect(page.locator("#ep-events")).to_be_focused()
    await page.keyboard.type("keys.pressed, keys.*")
    await page.keyboard.press("Tab")
    await page.keyboard.type("Typed with the keyboard")
    await page.keyboard.press("Tab")
    await expect(page.locator("#ep-schedule")).to_be_focused()
    await page.keyboard.type("1, 2")
    await page.keyboard.press("Enter")  # submits the form
    await expect(page.locator("#secret-dialog")).to_be_visible()
    await expect(page.locator("#secret-value")).to_be_focused()
    secret = await page.input_value("#secret-value")
    await tab_to(page, "#secret-done")
    await page.keyboard.press("Enter")
    await expect(page.locator("#secret-dialog")).to_be_hidden()
    endpoint_id = page.url.rsplit("/", 1)[-1]
    _, ep = await api.call("GET", "ingest", f"/v1/endpoints/{endpoint_id}", admin, expect=200)
    assert ep["events"] == ["keys.pressed", "keys.*"] and ep["retry_schedule"] == [1, 2]
    assert ep["description"] == "Typed with the keyboard"

    # Escape closes a dialog; the destructive choice is not the default one
    await tab_to(page, "#endpoint-edit")
    await page.keyboard.press("Enter")
    await expect(page.locator("#endpoint-dialog")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.locator("#endpoint-dialog")).to_be_hidden()
    await tab_to(page, "#endpoint-delete")
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm-no")).to_be_focused()
    await page.keyboard.press("Shift+Tab")
    await expect(page.locator("#confirm-yes")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#view-endpoints")).to_be_visible()
    await expect(page.locator("#status")).to_have_text(f"Endpoint {endpoint_id} deleted.")
    status, _ = await api.call("GET", "ingest", f"/v1/endpoints/{endpoint_id}", admin)
    assert status == 404
    tab.assert_private(secret)


async def test_an_api_error_is_shown_with_its_code(tab: Tab) -> None:
    from playwright.async_api import expect

    page = tab.page
    await page.fill("#token", "dihya_not_a_real_token")
    await page.click("#signin-form button[type=submit]")
    alert = page.locator("#alert")
    await expect(alert).to_contain_text("This token is not valid")
    await expect(alert.locator("code")).to_have_text("unauthorized")
    await expect(page.locator("#view-signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def logged_event(api: Api, event_id: str, attempts: int) -> dict[str, Any]:
    """Wait until the message log shows ``attempts`` attempts of the event's one delivery."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        status, body = await api.call("GET", "ingest", f"/v1/events/{event_id}",
                                      api.system.admin_token)
        if status != 200 or not body["deliveries"]:
            return False
        found.update(body)
        return len(body["deliveries"][0]["attempts"]) >= attempts

    await wait_for(done, timeout=20)
    return found


async def left_of(page: Page, first: str, second: str) -> bool:
    a = await page.locator(first).first.bounding_box()
    b = await page.locator(second).first.bounding_box()
    assert a and b
    return bool(a["x"] < b["x"])


async def test_the_message_log_shows_an_event_its_attempts_and_resends_it(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    await api.endpoint(receiver, "console-log", ["console.logged"])
    details = {"fr": "Commande 7 payée", "en": "Order 7 paid", "ar": "دُفع الطلب 7",
               "tzm": "Tettwaxelleṣ tladist 7"}
    event_id = await api.publish({"event": "console.logged", "lang": "fr",
                                  "data": {"order": 7, "details": details}})
    await receiver.wait(lambda ds: any(d.path == "console-log" for d in ds))
    sent = one(receiver.received("console-log"), lambda d: True)
    logged = await logged_event(api, event_id, 1)
    delivery = logged["deliveries"][0]

    await sign_in(page, admin)
    await page.click("#nav-messages")
    row = page.locator(f"#messages-table tr[data-event='{event_id}']")
    await expect(row).to_contain_text("console.logged")
    await expect(row).to_contain_text("1 delivered")
    # filters: by status and type, and an event id opens its page
    await page.select_option("#messages-status", "failed")
    await page.click("#messages-form button[type=submit]")
    await expect(row).to_be_hidden()
    await page.select_option("#messages-status", "delivered")
    await page.fill("#messages-type", "console.logged")
    await page.click("#messages-form button[type=submit]")
    await expect(row).to_be_visible()
    await shot(page, "messages-en")
    await page.fill("#messages-id", event_id)
    await page.click("#messages-form button[type=submit]")

    await expect(page.locator("#event-title")).to_contain_text(event_id)
    for lang, text in details.items():
        quote = page.locator(f"#event-details blockquote[lang='{lang}']")
        await expect(quote).to_have_text(text)
    await expect(page.locator("#event-details blockquote[lang='ar']")).to_have_attribute(
        "dir", "rtl")
    payload = json.loads(await page.locator("#event-payload").text_content() or "")
    # what the receiver got: the same event (plus the delivery's own block; the signer writes
    # the timestamp to the millisecond)
    body = sent.json
    assert {k: payload[k] for k in ("id", "event", "lang", "data")} == {
        k: body[k] for k in ("id", "event", "lang", "data")}
    stamps = [datetime.fromisoformat(x["timestamp"]) for x in (payload, body)]
    assert abs((stamps[0] - stamps[1]).total_seconds()) < 0.001
    assert payload["id"] == event_id and payload["data"]["details"] == details
    panel = page.locator(f"#event-deliveries section[data-delivery='{delivery['id']}']")
    await expect(panel).to_contain_text("Delivered")
    attempt = panel.locator("tr[data-attempt='1']")
    await expect(attempt).to_contain_text("200")
    await attempt.locator("details").first.locator("summary").click()
    headers = attempt.locator("dl.headers").first
    await expect(headers).to_contain_text("webhook-signature")
    shown = await headers.text_content() or ""
    whole = sent.headers["webhook-signature"]
    assert whole[:11] in shown and whole not in shown  # shortened, never whole
    assert sent.headers["X-Dihya-Signature"] not in shown
    await shot(page, "event-en")

    # resend a delivered delivery: the receiver gets it again, same id, next attempt
    await panel.get_by_role("button", name=f"Resend delivery {delivery['id']}").click()
    await expect(page.locator("#status")).to_have_text(
        f"Delivery {delivery['id']} sent again as attempt 2.")
    await receiver.wait(lambda ds: sum(d.path == "console-log" for d in ds) == 2)
    again = receiver.received("console-log")[-1]
    assert again.headers["webhook-id"] == sent.headers["webhook-id"]
    assert again.headers["X-Dihya-Attempt"] == "2" and again.guide_ok
    await logged_event(api, event_id, 2)
    await page.reload()
    await expect(panel.locator("tr[data-attempt='2']")).to_contain_text("200")

    # Arabic: right to left, the numbers with units and the lists kept left to right
    await page.select_option("#lang", "ar")
    await expect(page.locator("html")).to_have_attribute("dir", "rtl")
    await expect(page.locator("#event-deliveries-title")).to_have_text("التسليمات")
    assert not await left_of(page, "#event-title", "#event-facts dd")  # the title starts right
    cols = panel.locator("table.attempts thead th")
    first, second = await cols.nth(0).bounding_box(), await cols.nth(1).bounding_box()
    assert first and second and first["x"] > second["x"]
    latency = panel.locator("tr[data-attempt='1'] bdi.measure").last
    await expect(latency).to_have_css("direction", "ltr")
    assert (await latency.text_content() or "").endswith(" ms")
    await shot(page, "event-ar")
    await page.click("#nav-messages")
    await expect(page.locator("#messages-title")).to_have_text("الرسائل")
    await shot(page, "messages-ar")
    tab.assert_private(api_secret(receiver, "console-log"))


def api_secret(receiver: Receiver, name: str) -> str:
    return str(receiver.secrets[name])


async def test_endpoint_health_charts_recover_and_bulk_retry(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    receiver.statuses["console-health"] = [503, 503]
    _, ep = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("console-health"), "events": ["console.health"],
        "retry_schedule": []}, expect=201)
    receiver.secrets["console-health"] = ep["secret"]
    ids = [await api.publish({"event": "console.health", "data": {"n": n}}) for n in range(3)]
    await receiver.wait(lambda ds: sum(d.path == "console-health" for d in ds) == 3)

    async def failed() -> int:
        _, body = await api.call("GET", "ingest", f"/v1/endpoints/{ep['id']}/deliveries",
                                 admin, expect=200)
        return len(body["items"])

    async def two_failed() -> bool:
        return await failed() == 2

    await wait_for(two_failed, timeout=20)
    for event_id in ids:
        await logged_event(api, event_id, 1)

    await sign_in(page, admin)
    row = page.locator(f"#endpoints-table tr[data-id='{ep['id']}']")
    await expect(row).to_contain_text("33.3 %")
    await expect(row).to_contain_text("3 attempts")
    bars = row.locator("svg.bars")
    await expect(bars).to_have_attribute("role", "img")
    label = await bars.get_attribute("aria-label") or ""
    assert "3 attempts, 2 failed" in label
    hours = bars.locator("g[data-hour]")
    assert await hours.count() == 24
    last = hours.last
    assert (await last.get_attribute("data-failed"), await last.get_attribute("data-delivered")
            ) in (("2", "1"), ("0", "0"))  # the hour may have turned since
    await expect(page.locator("#endpoints-chart svg.bars")).to_be_visible()
    await shot(page, "health-en")

    await row.locator("a").click()
    await expect(page.locator("#health-facts")).to_contain_text("33.3 %")
    await expect(page.locator("#health-chart svg.bars")).to_be_visible()
    # recover since an hour ago: the two failed deliveries go again (and are delivered)
    await page.fill("#recover-since", "2000-01-01T00:00:00")
    await page.click("#recover-form button[type=submit]")
    await expect(page.locator("#status")).to_have_text("2 deliveries sent again.")
    await receiver.wait(lambda ds: sum(d.path == "console-health" for d in ds) == 5)
    # nothing failed any more: the bulk retry sends nothing
    await page.click("#endpoint-retry-failed")
    await page.click("#confirm-yes")
    await expect(page.locator("#status")).to_have_text("0 failed deliveries sent again.")

    await page.select_option("#lang", "ar")
    await page.click("#nav-endpoints")
    await expect(row).to_be_visible()  # the list is drawn again
    headers = page.locator("#endpoints-table thead th")
    first, second = await headers.nth(0).bounding_box(), await headers.nth(1).bounding_box()
    assert first and second and first["x"] > second["x"]
    assert await bars.get_attribute("dir") == "ltr"  # time runs left to right in any language
    await shot(page, "health-ar")
    tab.assert_private(ep["secret"])


async def test_tokens_and_event_types_pages(tab: Tab, api: Api, receiver: Receiver) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    await sign_in(page, admin)
    await page.click("#nav-tokens")
    await page.select_option("#token-role", "viewer")
    await page.fill("#token-description", "made in the console")
    await page.click("#token-form button[type=submit]")
    dialog = page.locator("#secret-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#secret-title")).to_have_text("API token")
    token = await page.input_value("#secret-value")
    assert token.startswith("dihya_")
    await page.click("#secret-done")
    assert await page.input_value("#secret-value") == ""
    status, me = await api.call("GET", "ingest", "/v1/me", token)
    assert status == 200 and me["role"] == "viewer"
    row = page.locator(f"#tokens-table tr[data-token='{me['token_id']}']")
    await expect(row).to_contain_text("made in the console")
    await shot(page, "tokens-en")
    await row.get_by_role("button", name=f"Revoke token {me['token_id']}").click()
    await page.click("#confirm-yes")
    await expect(page.locator("#status")).to_have_text(f"Token {me['token_id']} revoked.")
    await expect(row.locator("button")).to_have_count(0)
    status, _ = await api.call("GET", "ingest", "/v1/me", token)
    assert status == 401

    # the catalog: the four templates, an example, and a test of the type to one endpoint
    # (not to the type's other subscriber)
    target = await api.endpoint(receiver, "console-types", ["other.thing"])
    await api.endpoint(receiver, "console-types-other", ["template.created"])
    await page.click("#nav-event-types")
    section = page.locator("#types-list section[data-type='template.created']")
    await expect(section.locator("blockquote")).to_have_count(4)
    await expect(section.locator("blockquote[lang='tzm']")).not_to_be_empty()
    # the example payload: the type, the page's language, a test flag and each placeholder
    _, types = await api.call("GET", "ingest", "/v1/event-types", admin, expect=200)
    [created] = [x for x in types["items"] if x["event"] == "template.created"]
    assert created["placeholders"]  # so the example has more than the test flag
    await section.locator("details summary").click()
    example = json.loads(await section.locator("details pre").text_content() or "")
    assert example == {"event": "template.created", "lang": "en", "data": {
        "test": True, **{name: f"example-{name}" for name in created["placeholders"]}}}
    await section.locator("select").select_option(target["id"])
    await section.get_by_role("button", name="Send a test event of type template.created").click()
    await expect(page.locator("#status")).to_contain_text(f"sent to {target['url']}")
    await receiver.wait(lambda ds: any(d.path == "console-types" for d in ds))
    got = one(receiver.received("console-types"), lambda d: True)
    assert got.json["event"] == "template.created" and got.json["data"]["test"] is True
    assert set(got.json["data"]["details"]) == {"fr", "en", "ar", "tzm"}
    assert got.guide_ok
    assert receiver.received("console-types-other") == []
    await shot(page, "event-types-en")

    # the endpoint form offers the catalog's types (free text still allowed)
    await page.click("#nav-endpoints")
    await page.click("#endpoint-new")
    await page.fill("#ep-events", "my.own.*")
    await page.locator("#ep-catalog-list input[value='template.created']").check()
    await expect(page.locator("#ep-events")).to_have_value("my.own.*, template.created")
    await page.click("#endpoint-form .cancel")

    await page.select_option("#lang", "ar")
    await page.click("#nav-tokens")
    await expect(page.locator("#tokens-title")).to_have_text("رموز الواجهة البرمجية")
    await expect(row).to_be_visible()
    cols = page.locator("#tokens-table thead th")
    first, second = await cols.nth(0).bounding_box(), await cols.nth(1).bounding_box()
    assert first and second and first["x"] > second["x"]
    await shot(page, "tokens-ar")
    await page.click("#nav-event-types")
    await expect(section.locator("blockquote[lang='ar']")).to_have_attribute("dir", "rtl")
    await shot(page, "event-types-ar")
    tab.assert_private(token)


LOCALES = ROOT / "services" / "ingest" / "console" / "static" / "locales"
TIFINAGH_CHARS = re.compile("[\u2d30-\u2d7f]")
DAY_FIRST = re.compile(r"\b\d{2}/\d{2}/\d{4}\b")
"""A short date as Morocco's French writes it (day first), which tzm and fr pages use."""


def console_messages(lang: str) -> dict[str, str]:
    return dict(json.loads((LOCALES / f"{lang}.json").read_text("utf-8")))


async def texts_are_translated(page: Page, view: str, messages: dict[str, str]) -> int:
    """Every visible ``[data-i18n]`` element of ``#view-<view>`` shows its text in the page's
    language (the catalog's, not English); how many were checked."""
    shown = await page.locator(f"#view-{view} [data-i18n]").evaluate_all(
        "(els) => els.filter((e) => e.getClientRects().length)"
        ".map((e) => [e.dataset.i18n, e.textContent])")
    wrong = {key: text for key, text in shown if text != messages[key]}
    assert not wrong, (view, wrong)
    assert shown, view
    return len(shown)


TOFU_PROBE = """(el) => {
  // each distinct Tifinagh letter of the element, drawn in the element's own font, against
  // characters no font has (they draw the same .notdef box): a letter drawn like them is tofu
  const font = getComputedStyle(el).fontFamily;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 64;
  const ctx = canvas.getContext("2d");
  const draw = (ch) => {
    ctx.clearRect(0, 0, 64, 64);
    ctx.font = `40px ${font}`;
    ctx.fillText(ch, 4, 48);
    const data = ctx.getImageData(0, 0, 64, 64).data;
    let hash = 0, ink = 0;
    for (let i = 3; i < data.length; i += 4) {
      hash = (hash * 31 + data[i]) >>> 0;
      if (data[i]) ink++;
    }
    return { hash, ink, width: ctx.measureText(ch).width };
  };
  const letters = [...new Set([...el.textContent].filter((c) => /[\\u2d30-\\u2d7f]/.test(c)))];
  const tofu = [draw("\\ue000"), draw("\\u{10fffd}")];
  return { tofu, letters: letters.map((c) => [c, draw(c)]) };
}"""


async def tifinagh_renders(page: Page, selector: str) -> None:
    """The element's Tifinagh letters are drawn with real glyphs: ink, width, each its own
    shape, none the box of a missing glyph (a machine without a Tifinagh font fails here)."""
    found = await page.locator(selector).first.evaluate(TOFU_PROBE)
    tofu = {probe["hash"] for probe in found["tofu"]}
    assert len(tofu) == 1, found["tofu"]  # the probe itself works: both missing, one box
    letters = found["letters"]
    assert len(letters) >= 3, letters
    boxes = [c for c, drawn in letters if drawn["hash"] in tofu or not drawn["ink"]
             or not drawn["width"]]
    assert not boxes, (f"Tifinagh drawn as boxes: {''.join(boxes)} — install a font with "
                       "Tifinagh glyphs (Debian: fonts-noto-core, as .ci/run does)")
    assert len({drawn["hash"] for _, drawn in letters}) == len(letters)


async def test_french_and_tamazight_views_show_their_content_and_tifinagh_renders(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    """The dashboard's views in fr, tzm (Latin, the default) and Tifinagh: every label of
    each view, and its content — counts, statuses, day-first dates, the catalog's texts in
    that language and the "awaits a native speaker's review" note on the Arabic and Tamazight
    ones. Then Arabic's event-types page by positions."""
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    ep = await api.endpoint(receiver, "console-langs", ["console.langs", "template.created"])
    details = {"fr": "Commande 9 payée", "en": "Order 9 paid", "ar": "دُفع الطلب 9",
               "tzm": "ⵉⵜⵜⵓⵅⵍⵚ ⵓⵙⵓⵜⵔ 9"}  # a publisher's Tifinagh, as written
    event_id = await api.publish({"event": "console.langs", "lang": "tzm",
                                  "data": {"order": 9, "details": details}})
    logged = await logged_event(api, event_id, 1)
    delivery = logged["deliveries"][0]
    _, catalog = await api.call("GET", "ingest", "/v1/event-types", admin, expect=200)
    created = next(i for i in catalog["items"] if i["event"] == "template.created")
    assert created["awaiting_native_review"] == ["ar", "tzm"]
    console = api.system.console_url()
    viewer = await new_token(api, "viewer")

    await sign_in(page, admin)
    for lang, tag in (("fr", "fr"), ("tzm", "tzm-Latn"), ("tzm-Tfng", "tzm-Tfng")):
        m = console_messages(lang)
        await page.select_option("#lang", lang)
        await expect(page.locator("html")).to_have_attribute("lang", tag)
        # a translation awaiting a native speaker's review says so beside the picker
        if lang == "fr":
            await expect(page.locator("#lang-review")).to_be_hidden()
        else:
            await expect(page.locator("#lang-review")).to_have_text(m["lang.unreviewed"])
        checked = 0

        # the message log: the row's counts in this language, its time day first
        await page.goto(f"{console}#/messages")
        row = page.locator(f"#messages-table tr[data-event='{event_id}']")
        await expect(row).to_contain_text(m["lcount.delivered"].replace("{n}", "1"))
        cells = await row.inner_text()  # cells apart (text_content runs them together)
        assert DAY_FIRST.search(cells), (lang, cells)
        checked += await texts_are_translated(page, "messages", m)
        await shot(page, f"messages-{lang}")

        # an event: the publisher's four texts as written, the delivery's status translated
        await page.goto(f"{console}#/events/{event_id}")
        await expect(page.locator("#event-details blockquote[lang='tzm']")).to_have_text(
            details["tzm"])
        panel = page.locator(f"#event-deliveries section[data-delivery='{delivery['id']}']")
        await expect(panel).to_contain_text(m["lstatus.delivered"])
        checked += await texts_are_translated(page, "event", m)
        await shot(page, f"event-{lang}")

        # endpoints with their health, in this language's words and numbers
        await page.goto(f"{console}#/endpoints")
        ep_row = page.locator(f"#endpoints-table tr[data-id='{ep['id']}']")
        await expect(ep_row).to_contain_text(m["health.attempts"].replace("{n}", "1"))
        checked += await texts_are_translated(page, "endpoints", m)

        await page.goto(f"{console}#/tokens")
        await expect(page.locator(f"#tokens-table tr[data-token='{viewer['id']}']")
                     ).to_contain_text(m["role.viewer"])
        checked += await texts_are_translated(page, "tokens", m)

        # the catalog: its text in this language, and which translations await review
        await page.goto(f"{console}#/event-types")
        section = page.locator("#types-list section[data-type='template.created']")
        await expect(section.locator("p > span").first).to_have_text(
            created["description"][lang.split("-")[0]])
        for shown_lang in ("fr", "en", "ar", "tzm"):
            note = section.locator(f"figure[data-lang='{shown_lang}'] small.review")
            if shown_lang in ("ar", "tzm"):
                await expect(note).to_have_text(m["types.unreviewed"])
            else:
                await expect(note).to_have_count(0)
        own = section.locator("p small.review")
        await expect(own).to_have_count(0 if lang == "fr" else 1)
        checked += await texts_are_translated(page, "event-types", m)
        await shot(page, f"event-types-{lang}")
        assert checked >= 15, (lang, checked)

    # Tifinagh: the nav, a title and the publisher's text are drawn with real glyphs
    await expect(page.locator("#nav-endpoints")).to_have_text(
        console_messages("tzm-Tfng")["nav.endpoints"])
    await tifinagh_renders(page, "#nav-endpoints")
    await tifinagh_renders(page, "#types-title")
    await page.goto(f"{console}#/events/{event_id}")
    await tifinagh_renders(page, "#event-details blockquote[lang='tzm']")

    # Arabic: the catalog's languages run right to left (the first, fr, starts at the right)
    ar = console_messages("ar")
    await page.select_option("#lang", "ar")
    await expect(page.locator("#event-deliveries-title")).to_have_text(ar["event.deliveries"])
    await expect(page.locator("#lang-review")).to_have_text(ar["lang.unreviewed"])
    await page.goto(f"{console}#/event-types")
    await expect(page.locator("#view-event-types")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("dir", "rtl")
    section = page.locator("#types-list section[data-type='template.created']")
    await expect(section.locator("figure[data-lang='ar'] small.review")).to_have_text(
        ar["types.unreviewed"])
    # read in one go, from the page as drawn: the list is drawn again when the page's language
    # settles, and an element read just before that is detached (all its positions 0)
    drawn = await page.wait_for_function("""() => {
        const s = document.querySelector("#types-list section[data-type='template.created']");
        const all = s && s.querySelector(".languages");
        const fr = s && s.querySelector("figure[data-lang='fr']");
        if (!all || !fr) return null;
        const a = all.getBoundingClientRect(), f = fr.getBoundingClientRect();
        return a.width > 0 && f.width > 0 ? [a.left, a.right, f.left, f.right] : null; }""")
    left, right, fr_left, fr_right = await drawn.json_value()
    assert abs(fr_right - right) < 2 and fr_left > left + 2, (left, right, fr_left, fr_right)
    await shot(page, "event-types-ar-review")

    # and the message log's columns: the first one is the rightmost
    await page.goto(f"{console}#/messages")
    await expect(page.locator(f"#messages-table tr[data-event='{event_id}']")).to_contain_text(
        ar["lcount.delivered"].replace("{n}", "\u20681\u2069"))  # isolated, as t() does
    cols = page.locator("#messages-table thead th")
    first_col, second_col = await cols.nth(0).bounding_box(), await cols.nth(1).bounding_box()
    assert first_col and second_col and first_col["x"] > second_col["x"]
    tab.assert_private(ep["secret"])


async def test_small_screens_banners_languages_and_errors(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    ep = await api.endpoint(receiver, "console-narrow", ["narrow.one", "narrow.two", "narrow.#"])
    await sign_in(page, admin)
    await page.set_viewport_size({"width": 390, "height": 844})
    for lang in ("en", "ar"):
        await page.select_option("#lang", lang)
        await page.goto(f"{api.system.console_url()}#/endpoints/{ep['id']}")
        await expect(page.locator("#endpoint-facts")).to_contain_text("narrow.one")
        wide = await page.evaluate("document.documentElement.scrollWidth")
        assert wide <= 390, (lang, wide)
    # the comma list stays in order in Arabic: one left-to-right isolate
    lists = page.locator("#endpoint-facts bdi.list")
    await expect(lists.first).to_have_css("direction", "ltr")
    await page.set_viewport_size({"width": 1280, "height": 860})

    # "Language changed" only when it changed; banners do not follow to the next page
    await page.select_option("#lang", "en")
    await expect(page.locator("#status")).to_have_text("Language changed to English.")
    await page.click("#nav-messages")
    status = page.locator("#status")
    await expect(status).to_have_text(re.compile(r"^\d+\+? events\.$"))  # this page's own
    found = await status.text_content()
    await page.evaluate("""() => { const s = document.getElementById('lang');
        s.value = 'en'; s.dispatchEvent(new Event('change')); }""")
    # nothing to await for an absence: give the handler (a cached catalog, a 30 ms timer)
    # ten times what it needs before looking
    await page.wait_for_timeout(300)
    await expect(status).to_have_text(found or "")

    # an API error in Arabic: localized, the server's English folded away
    await page.select_option("#lang", "ar")
    await page.goto(f"{api.system.console_url()}#/events/evt_does_not_exist")
    alert = page.locator("#alert")
    await expect(alert.locator("strong")).to_have_text("غير موجود (أو لم يعد موجودًا).")
    assert not await alert.locator("details").evaluate("(e) => e.open")
    await page.click("#nav-endpoints")
    await expect(alert).to_be_hidden()
    tab.assert_private(ep["secret"])


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_screenshots_were_written() -> None:
    """Runs last (file order): every screenshot this module took is a real, recent PNG."""
    if not WRITTEN:
        pytest.skip("no console test ran before this one")
    names = {p.stem for p in WRITTEN}
    if len(names) >= 5:  # the whole module ran: English and Arabic at least
        assert {"endpoint-en", "endpoint-ar", "endpoints-ar", "audit-en"} <= names
    for path in WRITTEN:
        assert path.stat().st_mtime >= STARTED - 1, path
        assert path.stat().st_size > 20_000, path  # a rendered page, not a blank one
        width, height = _png_size(path)
        assert width >= 1280 and height >= 600, (path, width, height)



async def test_a_portal_link_shows_one_tenant_only(tab: Tab, api: Api, receiver: Receiver
                                                   ) -> None:
    """Issue #21: a platform opens the console for one customer with a one-time link."""
    from playwright.async_api import expect

    page = tab.page
    admin = api.system.admin_token
    run = uuid.uuid4().hex[:8]
    tenants = {}
    for name in ("a", "b"):
        _, made = await api.call("POST", "ingest", "/v1/tenants", admin,
                                 {"name": f"Portal {name}", "external_id": f"pt-{name}-{run}"},
                                 expect=201)
        tenants[name] = made
    _, mine = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("portal-a"), "events": ["portal.a"], "tenant": f"pt-a-{run}"},
        expect=201)
    _, theirs = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("portal-b"), "events": ["portal.b"], "tenant": f"pt-b-{run}"},
        expect=201)
    _, link = await api.call("POST", "ingest", f"/v1/tenants/pt-a-{run}/portal-sessions",
                             admin, {"role": "tenant_viewer"}, expect=201)
    code = link["url"].split("#portal=")[1]

    await page.goto(link["url"])
    await expect(page.locator("#signout")).to_be_visible()
    await expect(page.locator("#endpoints-table")).to_contain_text("portal.a")
    await expect(page.locator("#endpoints-table")).not_to_contain_text("portal.b")
    await expect(page.locator("#nav-tokens")).to_be_hidden()
    await expect(page.locator("#nav-audit")).to_be_hidden()
    await expect(page.locator("#endpoint-new")).to_be_hidden()
    assert "portal=" not in page.url  # the code left the address bar (and history)
    await page.goto(f"{api.system.console_url()}#/endpoints/{theirs['id']}")
    await expect(page.locator("#endpoint-facts")).not_to_contain_text("portal.b")
    await expect(page.locator("#endpoint-facts")).not_to_contain_text(theirs["url"])
    reused = await api.call("POST", "ingest", "/v1/portal/exchange", None, {"code": code})
    assert reused[0] == 401  # the link opened one session
    tab.assert_private(code, mine["secret"], theirs["secret"])


async def test_a_platform_admin_picks_a_tenant(tab: Tab, api: Api, receiver: Receiver) -> None:
    from playwright.async_api import expect

    page = tab.page
    admin = api.system.admin_token
    run = uuid.uuid4().hex[:8]
    await api.call("POST", "ingest", "/v1/tenants", admin,
                   {"name": "Picked", "external_id": f"pick-{run}"}, expect=201)
    _, picked = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url(f"pick-{run}"), "events": ["pick.me"], "tenant": f"pick-{run}"},
        expect=201)
    await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url(f"other-{run}"), "events": ["pick.other"]}, expect=201)
    await sign_in(page, admin)
    await expect(page.locator("#endpoints-table")).to_contain_text("pick.other")
    await expect(page.locator("#tenant-picker")).to_be_visible()
    await page.fill("#tenant-pick", f"pick-{run}")
    await page.click("#tenant-picker button[type=submit]")
    await expect(page.locator("#endpoints-table")).not_to_contain_text("pick.other")
    await expect(page.locator("#endpoints-table")).to_contain_text("pick.me")
    # a new endpoint goes to the picked tenant
    await page.click("#endpoint-new")
    await expect(page.locator("#ep-tenant")).to_have_value(f"pick-{run}")
    await page.keyboard.press("Escape")
    tab.assert_private(picked["secret"])


async def test_a_platform_admin_searches_the_message_log_by_tenant(
    tab: Tab, api: Api, receiver: Receiver
) -> None:
    """The Messages page narrows the log to one tenant (the tenant picked on the endpoints page
    too); an unknown tenant is the API's 404, shown."""
    from playwright.async_api import expect

    page, admin = tab.page, api.system.admin_token
    run = uuid.uuid4().hex[:8]
    events = {}
    for name in ("a", "b"):
        await api.call("POST", "ingest", "/v1/tenants", admin,
                       {"name": f"Log {name}", "external_id": f"mlog-{name}-{run}"}, expect=201)
        _, ep = await api.call("POST", "ingest", "/v1/endpoints", admin, {
            "url": receiver.url(f"mlog-{name}-{run}"), "events": ["mlog.sent"],
            "tenant": f"mlog-{name}-{run}"}, expect=201)
        receiver.secrets[f"mlog-{name}-{run}"] = ep["secret"]
        events[name] = await api.publish({"event": "mlog.sent", "data": {"to": name},
                                          "tenant": f"mlog-{name}-{run}"})
    for event_id in events.values():
        await logged_event(api, event_id, 1)

    await sign_in(page, admin)
    await page.click("#nav-messages")
    rows = {name: page.locator(f"#messages-table tr[data-event='{event_id}']")
            for name, event_id in events.items()}
    await expect(rows["a"]).to_be_visible()
    await expect(rows["b"]).to_be_visible()
    await expect(page.locator("label[for='messages-tenant']")).to_have_text("Tenant")
    await page.fill("#messages-tenant", f"mlog-a-{run}")
    await page.click("#messages-form button[type=submit]")
    await expect(rows["b"]).to_be_hidden()
    await expect(rows["a"]).to_be_visible()
    await expect(page.locator("#messages-table tbody tr")).to_have_count(1)
    await shot(page, "messages-tenant-en")
    # the endpoints page shows the same tenant, and back again
    await page.click("#nav-endpoints")
    await expect(page.locator("#tenant-pick")).to_have_value(f"mlog-a-{run}")
    await expect(page.locator("#endpoints-table")).to_contain_text(receiver.url(f"mlog-a-{run}"))
    await expect(page.locator("#endpoints-table")).not_to_contain_text(
        receiver.url(f"mlog-b-{run}"))
    await page.fill("#tenant-pick", f"mlog-b-{run}")
    await page.click("#tenant-picker button[type=submit]")
    await page.click("#nav-messages")
    await expect(page.locator("#messages-tenant")).to_have_value(f"mlog-b-{run}")
    await expect(rows["a"]).to_be_hidden()
    await expect(rows["b"]).to_be_visible()
    # a tenant no one has: the API's answer, not an empty list
    await page.fill("#messages-tenant", f"nobody-{run}")
    await page.click("#messages-form button[type=submit]")
    await expect(page.locator("#alert code")).to_have_text("not_found")
    tab.assert_private(*(receiver.secrets[f"mlog-{n}-{run}"] for n in ("a", "b")))
