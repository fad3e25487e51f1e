"""What an operator reads in the log: one line per change, the access log, DEBUG, JSON."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dnsreg.core.acl import Right
from tests.helpers import (
    FakeClock,
    Process,
    Running,
    async_wait_until,
    make_config,
    start_server,
    wait_until,
)
from tests.http.test_auth import bearer, write_acl


@pytest.fixture
async def logged(tmp_path: Path) -> AsyncIterator[Running]:
    clock = FakeClock()
    server = await start_server(make_config(tmp_path, access_log=True), clock=clock)
    async with aiohttp.ClientSession() as http:
        yield Running(
            server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port,
            extra={"clock": clock},
        )  # fmt: skip
    await server.stop()


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_one_line_per_change_with_who_made_it(
    logged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    base = logged.base + "/v1/services/web/instances/web-1"
    await logged.register("web", "web-1", address="10.0.0.1", port=80, ttl="10s")
    await logged.register("web", "web-1", address="10.0.0.2", port=81, ttl="10s")
    async with logged.http.put(base + "/heartbeat") as resp:
        assert resp.status == 200
    async with logged.http.put(base + "/maintenance", json={"enable": True, "reason": "deploy"}):
        pass
    async with logged.http.put(base + "/maintenance", json={"enable": False}):
        pass
    async with logged.http.delete(base) as resp:
        assert resp.status == 200
    await logged.register("web", "web-2", address="10.0.0.3", port=82, ttl="10s")
    clock: FakeClock = logged.extra["clock"]
    clock.advance(11)
    store = logged.server.store
    assert store is not None
    await store.expire_now()  # type: ignore[attr-defined]

    by = "by token loopback from 127.0.0.1"
    assert messages(caplog, "dnsreg.changes") == [
        f"registered web/web-1 at 10.0.0.1:80 (lease 10s) {by} (revision 1)",
        f"replaced web/web-1 at 10.0.0.2:81 (lease 10s, was 10.0.0.1:80) {by} (revision 2)",
        f"maintenance on web/web-1: withdrawn from DNS (deploy) {by} (revision 3)",
        f"maintenance off web/web-1: back in DNS if healthy {by} (revision 4)",
        f"deregistered web/web-1 {by} (revision 5)",
        f"registered web/web-2 at 10.0.0.3:82 (lease 10s) {by} (revision 6)",
        "expired web/web-2: lease of 10s lapsed without a heartbeat (revision 7)",
    ]
    change = next(r for r in caplog.records if r.name == "dnsreg.changes")
    assert (change.service, change.id, change.change, change.token, change.client) == (  # type: ignore[attr-defined]
        "web", "web-1", "registered", "loopback", "127.0.0.1",
    )  # fmt: skip
    # The heartbeat changed nothing: no change line, and the audit log has it at DEBUG only.
    audit = [r for r in caplog.records if r.name == "dnsreg.audit"]
    assert [r.getMessage().split()[0] for r in audit] == [
        "register", "register", "maintenance", "maintenance", "deregister", "register",
    ]  # fmt: skip


async def test_change_lines_name_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = write_acl(tmp_path / "acl.toml", {"web-writer": (["web"], [Right.WRITE])})
    server = await start_server(make_config(tmp_path, acl_file=acl))
    caplog.set_level(logging.INFO, logger="dnsreg.changes")
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.http_port}/v1/services/web/instances/w"
            body = {"address": "10.0.0.7", "port": 7}
            async with http.put(url, json=body, headers=bearer("web-writer")) as resp:
                assert resp.status == 201
    finally:
        await server.stop()
    assert messages(caplog, "dnsreg.changes") == [
        "registered web/w at 10.0.0.7:7 (lease 30s) by token web-writer from 127.0.0.1 (revision 1)"
    ]


async def test_access_log_one_line_per_request(
    logged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dnsreg.access")
    async with logged.http.get(logged.base + "/v1/services?prefix=w") as resp:
        body = await resp.read()
    async with logged.http.get(logged.base + "/v1/services/web/instances/nope") as resp:
        assert resp.status == 404
    await async_wait_until(lambda: len(messages(caplog, "dnsreg.access")) == 2)
    first, second = [r for r in caplog.records if r.name == "dnsreg.access"]
    assert first.getMessage().startswith("127.0.0.1 GET /v1/services?prefix=w 200 ")
    fields = {k: getattr(first, k) for k in ("client", "method", "path", "status", "bytes")}
    assert fields == {
        "client": "127.0.0.1", "method": "GET", "path": "/v1/services?prefix=w",
        "status": 200, "bytes": first.bytes,  # type: ignore[attr-defined]
    }  # fmt: skip
    assert first.bytes > len(body)  # type: ignore[attr-defined]  # sent, headers included
    assert first.duration_ms >= 0  # type: ignore[attr-defined]
    assert second.route == "/v1/services/{service}/instances/{id}"  # type: ignore[attr-defined]
    assert second.status == 404  # type: ignore[attr-defined]


async def test_no_access_log_unless_asked(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running.http.get(running.base + "/v1/services") as resp:
        assert resp.status == 200
    assert messages(caplog, "dnsreg.access") == []


async def test_client_errors_log_no_body_and_no_traceback(
    logged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # what `dnsreg serve --log-level debug` leaves aiohttp at
    caplog.set_level(logging.DEBUG, logger="dnsreg")
    url = logged.base + "/v1/services/web/instances/web-1"
    secret = '{"address": "10.0.0.1", "port": "SECRET-BODY-CONTENT"}'
    async with logged.http.put(url, data=secret) as resp:
        assert resp.status == 400
    # A request that is not HTTP at all, and a client that hangs up mid-body.
    for raw in (b"GARBAGE SECRET-BODY-CONTENT\r\n\r\n",
                b"PUT /v1/services/web/instances/x HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 500\r\n\r\n{\"SECRET-BODY-CONTENT"):  # fmt: skip
        with socket.create_connection(("127.0.0.1", logged.server.http_port)) as sock:
            sock.sendall(raw)
    await async_wait_until(lambda: len(messages(caplog, "dnsreg.access")) >= 2)
    assert "SECRET-BODY-CONTENT" not in caplog.text
    assert [r for r in caplog.records if r.exc_info] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_debug_lines_for_cache_misses_and_check_attempts(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dnsreg")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the check fails from its first run
    await running.register(
        "web",
        "web-1",
        address="127.0.0.1",
        checks=[{"tcp": f"127.0.0.1:{port}", "interval": "10s"}],
    )
    await running.register("api", "api-1")
    for _ in range(3):
        await running.query("api.service.local", "A")
    assert messages(caplog, "dnsreg.dns").count("answer cache miss: api.service.local. A") == 1
    checker = running.server.checker
    assert checker is not None
    await async_wait_until(lambda: checker.results["critical"] >= 1)
    health = messages(caplog, "dnsreg.health")
    assert any(m.startswith("check web/web-1[0] attempt: critical in ") for m in health)
    never = [r for r in caplog.records if "never passed" in r.getMessage()]
    assert len(never) == 1
    assert never[0].levelno == logging.WARNING
    expected = "check web/web-1[0] critical from its first run (never passed): TCP connect"
    assert never[0].getMessage().startswith(f"{expected} 127.0.0.1:{port}")


async def test_at_info_no_debug_lines_and_heartbeats_stay_quiet(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await running.register("api", "api-1")
    async with running.http.put(running.base + "/v1/services/api/instances/api-1/heartbeat"):
        pass
    for _ in range(3):
        await running.query("api.service.local", "A")
    assert [r for r in caplog.records if r.levelno < logging.INFO] == []
    assert messages(caplog, "dnsreg.dns") == []
    assert messages(caplog, "dnsreg.audit") == [
        "register api/api-1 by token loopback from 127.0.0.1"
    ]


def _put(base: str, path: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_json_log_format_from_the_real_command(spawn: Any) -> None:
    proc: Process = spawn("--log-format", "json", "--access-log")
    assert (
        _put(proc.base, "/v1/services/web/instances/w1", {"address": "10.0.0.1", "port": 80}) == 201
    )
    assert _put(proc.base, "/v1/services/web/instances/w1", {"address": "x", "port": 80}) == 400
    with socket.create_connection(("127.0.0.1", proc.http_port)) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in proc.log_text().splitlines() if line.strip()]

    wait_until(lambda: sum(1 for r in lines() if r["logger"] == "dnsreg.access") >= 3)
    records = lines()  # every line parses as one JSON object
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert record["ts"].endswith("Z")
    change = next(r for r in records if r["logger"] == "dnsreg.changes")
    assert change["level"] == "info"
    assert change["msg"].startswith("registered web/w1 at 10.0.0.1:80")
    assert (change["service"], change["id"], change["change"], change["token"]) == (
        "web", "w1", "registered", "loopback",
    )  # fmt: skip
    access = [r for r in records if r["logger"] == "dnsreg.access"]
    assert [(r["method"], r["status"]) for r in access[:2]] == [("PUT", 201), ("PUT", 400)]
    assert access[0]["route"] == "/v1/services/{service}/instances/{id}"
    assert isinstance(access[0]["bytes"], int)
    assert access[0]["bytes"] > 0
    assert not [r for r in records if r["level"] in ("error", "critical") or "exc" in r]


async def test_consul_writes_log_their_changes_with_the_token(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dnsreg.changes")
    body = {"Name": "web", "ID": "c1", "Address": "10.0.0.8", "Port": 8}
    async with running.http.put(running.base + "/v1/agent/service/register", json=body) as resp:
        assert resp.status == 200
    async with running.http.put(running.base + "/v1/agent/service/deregister/c1") as resp:
        assert resp.status == 200
    by = "by token loopback from 127.0.0.1"
    lines = messages(caplog, "dnsreg.changes")
    assert lines[0].startswith("registered web/c1 at 10.0.0.8:8 ")
    assert lines[0].endswith(f"{by} (revision 1)")
    assert lines[1] == f"deregistered web/c1 {by} (revision 2)"
