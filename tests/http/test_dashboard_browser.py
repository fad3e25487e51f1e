"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real server.

What a user would see: an instance registered over HTTP appears without a reload,
a failing check turns it critical with the check's output, and the maintenance
toggle takes it out of DNS (asked with dnspython) and puts it back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import ConsoleMessage, Page, Request, async_playwright, expect

from dnsreg.config import HostPort
from dnsreg.core.acl import Right, format_entry
from tests.helpers import Running, make_config, start_server

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)",
)


class HealthTarget:
    """A loopback HTTP server whose /health answers what the test says.

    On 127.0.0.5, the instance's own address: a check must target its instance (SPEC §7).
    """

    def __init__(self) -> None:
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def health(request: web.Request) -> web.Response:
            return web.Response(status=self.status, text=f"status {self.status}")

        app = web.Application()
        app.router.add_get("/health", health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.5", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.5:{port}/health"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def target() -> AsyncIterator[HealthTarget]:
    t = HealthTarget()
    await t.start()
    yield t
    await t.close()


@pytest.fixture
async def page() -> AsyncIterator[tuple[Page, list[str]]]:
    problems: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM)
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        pg = await context.new_page()

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":  # CSP violations and script errors land here
                problems.append(msg.text)

        pg.on("console", on_console)
        pg.on("pageerror", lambda exc: problems.append(str(exc)))
        yield pg, problems
        await browser.close()


async def a_records(running: Running, name: str) -> set[str]:
    reply = await running.query(name, "A")
    return {str(rd) for rrset in reply.answer for rd in rrset}


async def register(running: Running, service: str, iid: str, **body: Any) -> None:
    await running.register(service, iid, **body)


async def test_dashboard_live_health_and_maintenance(
    running: Running, target: HealthTarget, page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    pg, problems = page
    await register(running, "api", "api-1", address="10.0.1.1", port=9000, ttl=0)
    await pg.goto(running.base + "/")  # redirects to /ui/
    assert pg.url == running.base + "/ui/"
    await expect(pg.locator("#conn")).to_have_text("live", timeout=5000)
    await pg.get_by_role("button", name="api").click()
    await expect(pg.locator('[data-id="api-1"]')).to_be_visible(timeout=2000)

    # Registered while the page is open: appears without a reload, within 2 s.
    await pg.goto(running.base + "/ui/#web")
    await expect(pg.locator("#conn")).to_have_text("live", timeout=5000)
    check = {"http": target.url, "interval": "1s", "timeout": "500ms", "fall": 1}
    await register(running, "web", "web-1", address="127.0.0.5", ttl="30s", checks=[check],
                   tags=["eu"], meta={"version": "2.1"})  # fmt: skip
    card = pg.locator('[data-id="web-1"]')
    await expect(card).to_be_visible(timeout=2000)
    await expect(pg.get_by_role("button", name="web")).to_be_visible(timeout=2000)
    await expect(card).to_contain_text("127.0.0.5:8080/tcp")
    await expect(card).to_contain_text("version=2.1")
    await expect(card).to_contain_text("eu")
    await expect(card).to_have_class(re.compile(r"\bis-passing\b"), timeout=3000)
    lease = card.locator(".lease")
    # A 30 s lease shows 30 s or a little less (never more: same clock)...
    await expect(lease).to_have_text(re.compile(r"^lease (30|29|28)s left$"), timeout=2000)
    shown = await lease.text_content()
    await expect(lease).not_to_have_text(shown or "", timeout=3000)  # ...and counts down itself
    after = await lease.text_content() or ""
    assert int(after.split()[1].rstrip("s")) < int((shown or "").split()[1].rstrip("s"))

    # The check fails: critical, with the check's output, still without a reload.
    target.status = 500
    await expect(card).to_have_class(re.compile(r"\bis-critical\b"), timeout=3000)
    await expect(card.locator(".checks")).to_contain_text("c0 critical")
    await expect(card.locator(".checks")).to_contain_text("500")
    await expect(card).to_contain_text("not in DNS")
    assert "127.0.0.5" not in await a_records(running, "web.service.local")
    target.status = 200
    await expect(card).to_have_class(re.compile(r"\bis-passing\b"), timeout=3000)

    # Maintenance from the UI, with a token the user entered: DNS follows.
    await pg.get_by_label("API token").fill("s3cret-token")
    await pg.get_by_role("button", name="Use").click()
    sent: list[Request] = []
    pg.on("request", lambda r: sent.append(r) if r.method == "PUT" else None)
    assert await a_records(running, "web.service.local") == {"127.0.0.5"}
    toggle = pg.get_by_role("button", name="Maintenance for web-1")
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "true", timeout=2000)
    assert await a_records(running, "web.service.local") == set()
    assert sent[-1].headers["authorization"] == "Bearer s3cret-token"
    assert sent[-1].url.endswith("/v1/services/web/instances/web-1/maintenance")
    instance = running.server.registry.require("web", "web-1")
    assert instance.maintenance == "set from the dashboard"
    # Keyboard only: focus stays on the toggle across the re-render, Enter turns it off.
    await toggle.focus()
    await pg.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-pressed", "false", timeout=2000)
    assert await a_records(running, "web.service.local") == {"127.0.0.5"}
    assert await pg.evaluate("sessionStorage.getItem('dnsreg.token')") == "s3cret-token"

    # The filter box narrows the instances shown.
    await register(running, "web", "web-2", address="10.0.0.6", ttl=0)
    await expect(pg.locator('[data-id="web-2"]')).to_be_visible(timeout=2000)
    await pg.get_by_label("Filter").fill("10.0.0.6")
    await expect(pg.locator('[data-id="web-1"]')).to_have_count(0)
    await expect(pg.locator('[data-id="web-2"]')).to_be_visible()
    await pg.get_by_label("Filter").fill("")

    # Deregistered: gone from the page.
    async with running.http.delete(running.base + "/v1/services/web/instances/web-2") as resp:
        assert resp.status == 200
    await expect(pg.locator('[data-id="web-2"]')).to_have_count(0, timeout=2000)
    await pg.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert problems == []


async def test_dashboard_on_a_phone_has_no_horizontal_scroll(
    running: Running, page: tuple[Page, list[str]]
) -> None:
    pg, problems = page
    await pg.set_viewport_size({"width": 375, "height": 740})
    await register(running, "web", "web-1", address=str(ipaddress.ip_address("2001:db8::1")),
                   ttl=0, tags=["a-rather-long-tag-name", "eu"])  # fmt: skip
    await pg.goto(running.base + "/ui/#web")
    await expect(pg.locator('[data-id="web-1"]')).to_contain_text("[2001:db8::1]:8080")
    wide = await pg.evaluate("document.documentElement.scrollWidth")
    assert wide <= 375
    assert problems == []


async def test_reset_event_relists(tmp_path: Path, page: tuple[Page, list[str]]) -> None:
    """A server that cannot replay what the page missed sends `reset`; the page re-lists."""
    pg, _ = page
    server = await start_server(make_config(tmp_path, events_buffer=2))
    try:
        base = f"http://127.0.0.1:{server.http_port}"
        await pg.goto(base + "/ui/")
        await expect(pg.locator("#conn")).to_have_text("live", timeout=5000)
        await pg.evaluate("state.source.close()")  # the page goes offline...
        async with aiohttp.ClientSession() as http:
            for n in range(5):  # ...while more changes happen than the server keeps
                url = f"{base}/v1/services/batch/instances/b-{n}"
                async with http.put(url, json={"address": "10.0.9.1", "port": 80}) as resp:
                    assert resp.status == 201
        # Resuming from revision 0 (what Last-Event-ID would say): history is gone.
        await pg.evaluate("connect(0)")
        await expect(pg.locator("#announce")).to_have_text(
            "Missed changes; reloaded the list.", timeout=2000
        )
        await expect(pg.get_by_role("button", name="batch")).to_be_visible(timeout=2000)
        await expect(pg.get_by_role("button", name="batch")).to_contain_text("5/5 served")
    finally:
        await server.stop()


async def test_reconnects_after_a_restart_with_last_event_id(
    tmp_path: Path, page: tuple[Page, list[str]]
) -> None:
    """The server goes away and comes back: the page resumes where it was, by itself."""
    pg, _ = page
    server = await start_server(make_config(tmp_path))
    ports = {"dns": server.dns_port, "http": server.http_port}
    base = f"http://127.0.0.1:{server.http_port}"
    streams: list[Request] = []
    pg.on("request", lambda r: streams.append(r) if "/v1/events" in r.url else None)
    try:
        await pg.goto(base + "/ui/#web")
        await expect(pg.locator("#conn")).to_have_text("live", timeout=5000)
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/services/web/instances/web-1"
            async with http.put(url, json={"address": "10.0.0.5", "port": 80}) as resp:
                revision = (await resp.json())["revision"]
        await expect(pg.locator('[data-id="web-1"]')).to_be_visible(timeout=2000)
    finally:
        await server.stop()
    await expect(pg.locator("#conn")).not_to_have_text("live", timeout=5000)
    server = await start_server(
        make_config(
            tmp_path,
            dns=HostPort("127.0.0.1", ports["dns"]),
            http=HostPort("127.0.0.1", ports["http"]),
        )
    )
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/services/web/instances/web-2"
            async with http.put(url, json={"address": "10.0.0.6", "port": 80}) as resp:
                assert resp.status == 201
        await expect(pg.locator('[data-id="web-2"]')).to_be_visible(timeout=5000)
        await expect(pg.locator("#conn")).to_have_text("live")
        # The browser's own reconnect (HTML §9.2.3) carried the id of the last event
        # it saw; the server replayed what came after it.
        resumed = [(await r.all_headers()).get("last-event-id") for r in streams[1:]]
        assert resumed[0] == str(revision), resumed
    finally:
        await server.stop()


async def test_errors_are_shown(running: Running, page: tuple[Page, list[str]]) -> None:
    """A refused write is reported on the page, not swallowed."""
    pg, _ = page
    await register(running, "web", "web-1", ttl=0)
    await pg.goto(running.base + "/ui/#web")
    toggle = pg.get_by_role("button", name="Maintenance for web-1")
    await expect(toggle).to_be_visible(timeout=2000)
    async with (
        aiohttp.ClientSession() as http,
        http.delete(running.base + "/v1/services/web/instances/web-1") as resp,
    ):
        assert resp.status == 200
    # The card may still be on screen for a moment; clicking now hits a 404.
    await pg.evaluate(
        "setMaintenance({service: 'web', id: 'web-1'}, true, document.createElement('button'))"
    )
    await expect(pg.locator("#error")).to_contain_text("not registered", timeout=2000)


async def test_with_tokens_and_closed_reads(tmp_path: Path, page: tuple[Page, list[str]]) -> None:
    """acl_reads = "token": the page loads, asks for a token, then lists, follows and writes."""
    pg, _ = page
    secret = "s3cret-web-writer-0123456789abcdef"
    acl = tmp_path / "acl.toml"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    acl.write_text(format_entry("web-writer", digest, ["web"], [Right.WRITE]))
    server = await start_server(make_config(tmp_path, acl_file=acl, acl_reads="token"))
    base = f"http://127.0.0.1:{server.http_port}"
    auth = {"Authorization": f"Bearer {secret}"}
    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            url = f"{base}/v1/services/web/instances/web-1"
            async with http.put(url, json={"address": "10.0.0.5", "port": 80}) as resp:
                assert resp.status == 201
            await pg.goto(base + "/ui/#web")  # the page itself needs no token
            await expect(pg.locator("#error")).to_contain_text("Could not load", timeout=3000)
            await expect(pg.locator('[data-id="web-1"]')).to_have_count(0)
            await pg.get_by_label("API token").fill(secret)
            await pg.get_by_role("button", name="Use").click()
            await expect(pg.locator('[data-id="web-1"]')).to_be_visible(timeout=3000)
            await expect(pg.locator("#conn")).to_have_text("live", timeout=3000)
            # Live through the token-carrying stream: a new instance appears by itself.
            url = f"{base}/v1/services/web/instances/web-2"
            async with http.put(url, json={"address": "10.0.0.6", "port": 80}) as resp:
                assert resp.status == 201
            await expect(pg.locator('[data-id="web-2"]')).to_be_visible(timeout=2000)
            toggle = pg.get_by_role("button", name="Maintenance for web-2")
            await toggle.click()
            await expect(toggle).to_have_attribute("aria-pressed", "true", timeout=2000)
            assert server.registry.require("web", "web-2").maintenance == "set from the dashboard"
            # Without the token the write is refused, the page says so, nothing changes.
            await pg.get_by_role("button", name="Forget").click()
            await pg.evaluate(
                "setMaintenance({service: 'web', id: 'web-1'}, true, "
                "document.createElement('button'))"
            )
            await expect(pg.locator("#error")).to_contain_text("not changed", timeout=2000)
            assert server.registry.require("web", "web-1").maintenance is None
    finally:
        await server.stop()
