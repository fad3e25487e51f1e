"""HTTP limits over real sockets: a crowd of idle connections under a 1 024 open-files
limit, slow headers and bodies, and the descriptors a health probe needs.

The crowd scenarios run ``dnsreg serve`` in a subprocess whose RLIMIT_NOFILE is set to
1 024 soft and hard (systemd's default soft limit), so raising soft to hard gains nothing
and the connection cap is all that stands between the crowd and the health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import pytest
from aiohttp import web

from tests.helpers import Process, Running, async_wait_until, spawn_server

CROWD = 1100
NOFILE = 1024


def _limit_nofile() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Target:
    """A health-check target on 127.0.0.1 that counts its probes."""

    def __init__(self) -> None:
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _ok(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text="ok")

    async def __aenter__(self) -> Target:
        app = web.Application()
        app.router.add_get("/health", self._ok)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@contextlib.contextmanager
def _server(tmp_path: Path, settings: str = "") -> Iterator[Process]:
    (tmp_path / "zones").mkdir(exist_ok=True)
    conf = tmp_path / "dnsreg.toml"
    # About descriptors, not admission (tests/http/test_admission.py): the checked
    # instance is 10.0.0.1, its target on 127.0.0.1, probed every 200 ms.
    conf.write_text('checks_any_host = true\ncheck_min_interval = "100ms"\n' + settings)
    proc = spawn_server(tmp_path, "--config", str(conf), preexec_fn=_limit_nofile)
    try:
        yield proc
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def _crowd(port: int, count: int) -> AsyncIterator[list[socket.socket]]:
    """``count`` connections that connect and then say nothing (the test's own limit raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            socks.append(sock)
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def _served(proc: Process, name: str) -> set[str]:
    query = dns.message.make_query(name, "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=proc.dns_port, timeout=2)
    return {r.to_text() for rrset in reply.answer for r in rrset}


async def _register_checked(http: aiohttp.ClientSession, proc: Process, target: Target) -> None:
    check = {"http": f"http://127.0.0.1:{target.port}/health", "interval": 0.2, "fall": 1}
    url = f"{proc.base}/v1/services/web/instances/web-1"
    async with http.put(url, json={"address": "10.0.0.1", "port": 80, "checks": [check]}) as r:
        assert r.status == 201, await r.text()
    await async_wait_until(lambda: target.hits >= 2)


async def _status(proc: Process) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{proc.base}/v1/status") as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


async def test_1100_idle_connections_under_1024_files_keep_health_checks_running(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as proc:
        async with Target() as target, aiohttp.ClientSession() as http:
            await _register_checked(http, proc, target)
            assert await _served(proc, "web.service.local") == {"10.0.0.1"}
            async with _crowd(proc.http_port, CROWD):
                # Probes keep reaching the target with the crowd in place ...
                hits = target.hits
                await async_wait_until(lambda: target.hits >= hits + 5, within=10)
                # ... the instance stays served, and the API still answers.
                assert await _served(proc, "web.service.local") == {"10.0.0.1"}
                status = await _status(proc)
                conns = status["http"]["connections"]
                assert conns["max"] < NOFILE
                assert conns["open"] <= conns["max"]
                assert conns["evicted_idle"] >= CROWD - conns["max"]
            log = proc.log.read_text()
            assert "open-files limit 1024 (hard 1024)" in log
            assert "Too many open files" not in log
            assert "-> critical" not in log
            assert "closed the one idle the longest" in log
            assert " ERROR " not in log


async def test_probes_out_of_descriptors_keep_the_checks_state(tmp_path: Path) -> None:
    # Misconfigured on purpose: no reserve, so the crowd takes every descriptor and
    # the probes fail locally with EMFILE. That is no verdict on the target.
    settings = 'fd_reserve = 1\ntcp_max_connections = 1\nhttp_header_timeout = "60s"\n'
    with _server(tmp_path, settings) as proc:
        async with Target() as target, aiohttp.ClientSession() as http:
            await _register_checked(http, proc, target)
            async with _crowd(proc.http_port, CROWD):
                await async_wait_until(
                    lambda: "health probes cannot run" in proc.log.read_text(), within=10
                )
                assert await _served(proc, "web.service.local") == {"10.0.0.1"}
            log = proc.log.read_text()
            assert "-> critical" not in log
            assert log.count("health probes cannot run") <= 3  # rate-limited
            # The crowd gone, probes run again and the instance was served throughout;
            # the listener survived running out of descriptors.
            hits = target.hits
            await async_wait_until(lambda: target.hits >= hits + 2, within=10)
            assert await _served(proc, "web.service.local") == {"10.0.0.1"}
            assert (await _status(proc))["status"] == "ok"


async def test_slow_headers_are_cut_off(running_limits: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running_limits.server.http_port)
    started = time.monotonic()
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # never finished
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert 0.4 <= time.monotonic() - started < 3
    writer.close()
    limiter = running_limits.server.http_limiter
    assert limiter is not None
    assert limiter.header_timeouts == 1


async def test_a_body_that_does_not_arrive_gets_408(running_limits: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running_limits.server.http_port)
    writer.write(
        b"PUT /v1/services/web/instances/w1 HTTP/1.1\r\nHost: x\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"addr'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 5)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()
    assert running_limits.server.registry.get("web", "w1") is None


async def test_a_busy_connection_is_never_evicted_an_idle_one_is(running_limits: Running) -> None:
    base = running_limits.base
    limiter = running_limits.server.http_limiter
    assert limiter is not None
    limiter.max_connections = 3
    async with aiohttp.ClientSession() as watcher:
        # A blocking query holds its connection busy ...
        index = running_limits.server.registry.revision
        waiting = asyncio.ensure_future(
            watcher.get(f"{base}/v1/services/web?index={index}&wait=5s")
        )
        await async_wait_until(lambda: limiter.open >= 1)
        # ... while idle ones come and go.
        idle = [await asyncio.open_connection("127.0.0.1", running_limits.server.http_port)
                for _ in range(5)]  # fmt: skip
        await async_wait_until(lambda: limiter.evicted >= 3)
        await running_limits.register("web", "w1", address="10.0.0.1", port=80)
        resp = await asyncio.wait_for(waiting, 5)
        assert resp.status == 200
        assert [i["id"] for i in (await resp.json())["instances"]] == ["w1"]
        resp.release()
        for _, writer in idle:
            writer.close()


@pytest.fixture
async def running_limits(tmp_path: Path) -> AsyncIterator[Running]:
    from tests.helpers import make_config, start_server

    config = make_config(tmp_path, http_header_timeout=0.5, http_body_timeout=0.5)
    server = await start_server(config)
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()
