"""Health checks are no window into the network (SPEC §7), over real sockets.

What a target sends stays with the checker: the API, the log and the event
stream show the status line or the kind of error, never the body. And however
many registrations point checks at one address, it sees one probe at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import Running, async_wait_until, make_config, start_server

SECRET = "SECRET-KEY-1234"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path, check_concurrency=64))
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()


class Leaky:
    """Answers with a secret in the body, the reason phrase and a header."""

    def __init__(self) -> None:
        self.status = 503
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(
                status=self.status, reason=f"Down {SECRET}", text=f"{SECRET}\n" * 50,
                headers={"X-Secret": SECRET},
            )  # fmt: skip

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Handlers:
    """The connection handlers of raw asyncio test servers, so a test can wait for them:
    a handler still pending when the loop closes leaves its transport unclosed."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def track(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, r: Running, *servers: asyncio.Server) -> None:
        """Stop the checker first (no new probes; its connections close), then the servers."""
        await r.server.stop()
        for server in servers:
            server.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in servers:
            await server.wait_closed()


async def instance(r: Running, svc: str, iid: str) -> dict[str, Any]:
    async with r.http.get(f"{r.base}/v1/services/{svc}/instances/{iid}") as resp:
        body: dict[str, Any] = (await resp.json())["instance"]
        return body


async def test_check_output_is_the_status_line_never_the_body(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dnsreg")
    leaky = Leaky()
    await leaky.start()
    r = running
    url = f"http://127.0.0.1:{leaky.port}/key"
    events: list[str] = []
    async with r.http.get(f"{r.base}/v1/events") as stream:

        async def collect() -> None:
            async for line in stream.content:
                events.append(line.decode())

        reader = asyncio.create_task(collect())
        try:
            await r.register(
                "web", "web-1", address="127.0.0.1",
                checks=[{"http": url, "interval": "1s", "fall": 1}],
            )  # fmt: skip

            async def ran() -> bool:
                return (await instance(r, "web", "web-1"))["check_status"][0][
                    "last_run"
                ] is not None

            await async_wait_until(ran)
            status = (await instance(r, "web", "web-1"))["check_status"][0]
            assert status["output"] == f"HTTP GET {url}: HTTP 503 Service Unavailable"
            assert status["state"] == "critical"
            # Recovering shows the same: a status line and nothing the target said.
            leaky.status = 200

            async def passing() -> bool:
                status = (await instance(r, "web", "web-1"))["check_status"][0]
                return bool(status["state"] == "passing")

            await async_wait_until(passing, within=5.0)
            status = (await instance(r, "web", "web-1"))["check_status"][0]
            assert status["output"] == f"HTTP GET {url}: HTTP 200 OK"

            async def streamed() -> bool:
                return sum('"health"' in e or "event: health" in e for e in events) >= 1

            await async_wait_until(streamed)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await leaky.stop()
    text = "".join(events)
    assert "HTTP 503 Service Unavailable" in text or "HTTP 200 OK" in text
    assert SECRET not in text
    assert any("passing" in m and url in m for m in caplog.messages)  # the log did see it
    assert SECRET not in caplog.text
    async with r.http.get(f"{r.base}/v1/services/web") as resp:
        assert SECRET not in await resp.text()


async def test_error_kinds_instead_of_what_the_target_said(running: Running) -> None:
    r = running
    handlers = Handlers()

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.track()
        try:
            await reader.readuntil(b"\r\n\r\n")  # read the request: a close, not a reset
            writer.write(f"SSH-2.0-{SECRET}\r\n\r\n".encode())
        finally:  # also when a probe is cut off at shutdown
            writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(banner, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        await r.register(
            "web", "web-1", address="127.0.0.1",
            checks=[{"http": f"http://127.0.0.1:{port}/", "interval": "1s"},
                    {"http": f"http://127.0.0.1:{closed_port}/", "interval": "1s"}],
        )  # fmt: skip

        async def ran() -> bool:
            checks = (await instance(r, "web", "web-1"))["check_status"]
            return all(c["last_run"] is not None for c in checks)

        await async_wait_until(ran)
        first, second = (await instance(r, "web", "web-1"))["check_status"]
        assert first["output"] == f"HTTP GET http://127.0.0.1:{port}/: not an HTTP/1.x response"
        assert second["output"] == f"HTTP GET http://127.0.0.1:{closed_port}/: connection refused"
    finally:
        await handlers.drain(r, server)


async def test_three_hundred_checks_at_one_address_are_one_probe_at_a_time(
    running: Running,
) -> None:
    """The flood of issue 10: 300 registrations pointing checks at one target."""
    r = running
    now = {"open": 0, "peak": 0, "served": 0}
    handlers = Handlers()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.track()
        now["open"] += 1
        now["peak"] = max(now["peak"], now["open"])
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.002)  # a little work, so overlapping probes would show
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            now["served"] += 1
        finally:
            # Counted down before the bytes can reach the checker: no false overlap.
            now["open"] -= 1
            writer.close()

    target = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    check = {"http": f"http://127.0.0.1:{port}/health", "interval": "1s", "timeout": "1s"}
    try:
        start = time.monotonic()
        for n in range(300):
            await r.register("web", f"w{n}", address="127.0.0.1", checks=[check])

        async def all_ran() -> bool:
            async with r.http.get(f"{r.base}/v1/services/web") as resp:
                body = await resp.json()
            return len(body["instances"]) == 300 and all(
                i["check_status"][0]["state"] == "passing" for i in body["instances"]
            )

        await async_wait_until(all_ran, within=30.0, interval=0.2)
        assert now["served"] >= 300
        assert now["peak"] == 1, now
        assert time.monotonic() - start < 30
    finally:
        await handlers.drain(r, target)


async def test_a_check_by_name_is_pinned_to_the_instance_address(running: Running) -> None:
    """Rebinding: a name vetted at registration is not resolved again by the checker.

    ``localhost`` resolves to 127.0.0.1 (and ::1); the instance is 127.0.0.2, the
    same machine's loopback, so the check is admitted and pinned to 127.0.0.2.
    Only a server there sees the probe, with the name in its Host header.
    """
    r = running
    seen: list[tuple[str, str]] = []
    handlers = Handlers()

    def server(where: str) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.track()
            try:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                host = next(line for line in head.split("\r\n") if line.startswith("Host:"))
                seen.append((where, host))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            finally:
                writer.close()

        return handle

    pinned = await asyncio.start_server(server("127.0.0.2"), "127.0.0.2", 0)
    port = pinned.sockets[0].getsockname()[1]
    resolved = await asyncio.start_server(server("127.0.0.1"), "127.0.0.1", port)
    try:
        url = f"http://localhost:{port}/health"
        reply = await r.register(
            "web", "web-1", address="127.0.0.2", checks=[{"http": url, "interval": "1s"}]
        )
        assert reply["instance"]["checks"][0]["connect_to"] == "127.0.0.2"

        async def passing() -> bool:
            status = (await instance(r, "web", "web-1"))["check_status"][0]
            return bool(status["state"] == "passing")

        await async_wait_until(passing)
        assert seen
        assert all(s == ("127.0.0.2", f"Host: localhost:{port}") for s in seen), seen
    finally:
        await handlers.drain(r, pinned, resolved)
