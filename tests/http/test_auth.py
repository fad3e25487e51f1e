"""SPEC §7 over real sockets: every write route asks for a token, refusals change nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.rcode
import pytest

from dnsreg.client.sse import SseParser
from dnsreg.core.acl import Right, format_entry
from tests.helpers import Running, make_config, start_server

SECRETS = {
    "web-writer": "s3cret-web-writer-0123456789abcdef",
    "api-writer": "s3cret-api-writer-0123456789abcdef",
    "reader": "s3cret-reader-0123456789abcdef",
    "ops": "s3cret-ops-0123456789abcdef",
}
TOKENS: dict[str, tuple[list[str], list[Right]]] = {
    "web-writer": (["web", "web-*"], [Right.WRITE]),
    "api-writer": (["api"], [Right.WRITE]),
    "reader": (["*"], [Right.READ]),
    "ops": (["nothing"], [Right.OPERATOR]),  # operator: every service whatever the globs
}
UNKNOWN = "not-a-token-the-server-knows"
BODY = {"address": "10.0.0.66", "port": 9999}


def write_acl(path: Path, tokens: dict[str, tuple[list[str], list[Right]]]) -> Path:
    path.write_text(
        "\n".join(
            format_entry(name, hashlib.sha256(SECRETS[name].encode()).hexdigest(), *spec)
            for name, spec in tokens.items()
        )
    )
    return path


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS.get(name, name)}"}


async def serve(tmp_path: Path, **config: Any) -> AsyncIterator[Running]:
    acl = write_acl(tmp_path / "acl.toml", TOKENS)
    server = await start_server(make_config(tmp_path, acl_file=acl, **config))
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Running]:
    async for running in serve(tmp_path):
        yield running


@pytest.fixture
async def closed_reads(tmp_path: Path) -> AsyncIterator[Running]:
    async for running in serve(tmp_path, acl_reads="token"):
        yield running


async def call(
    running: Running, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = bearer(token) if token is not None else {}
    async with running.http.request(
        method, running.base + path, json=body, headers=headers
    ) as resp:
        payload = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, payload, resp


async def a_records(running: Running, name: str) -> list[str] | None:
    msg = await running.query(name, "A")
    if msg.rcode() == dns.rcode.NXDOMAIN:
        return None
    return sorted(r.to_text() for rr in msg.answer for r in rr)


async def snapshot(running: Running) -> tuple[Any, ...]:
    """What a refused write must leave alone: registry, DNS, revision."""
    _, web, _ = await call(running, "GET", "/v1/services/web", "ops")
    for instance in web["instances"]:
        instance.pop("lease_deadline")  # only a heartbeat moves it, and those are refused
    _, status, _ = await call(running, "GET", "/v1/status", "ops")
    return (
        web,
        status["revision"],
        await a_records(running, "web.service.local"),
        await a_records(running, "web-1.web.service.local"),
        await a_records(running, "new.web.service.local"),
    )


async def first_event_after(running: Running, since: int) -> dict[str, Any]:
    """The first change the event stream holds after revision ``since``."""
    parser = SseParser()
    async with running.http.get(
        f"{running.base}/v1/events?since={since}", headers=bearer("ops")
    ) as resp:
        async for raw in resp.content:
            message = parser.feed_line(raw.decode().rstrip("\n"))
            if message is not None and message.data is not None:
                event: dict[str, Any] = json.loads(message.data)
                event["id"] = int(message.last_id)
                return event
    raise AssertionError("stream ended")


WRITES = [
    ("PUT", "/v1/services/web/instances/web-1", BODY),  # replace someone's instance
    ("PUT", "/v1/services/web/instances/new", BODY),  # add one to their service
    ("PUT", "/v1/services/web/instances/web-1/heartbeat", None),
    ("DELETE", "/v1/services/web/instances/web-1", None),
    ("PUT", "/v1/services/web/instances/web-1/maintenance", {"enable": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=lambda v: str(v)[:40])
async def test_refused_writes_change_nothing(
    secured: Running, method: str, path: str, body: Any
) -> None:
    status, reply, _ = await call(
        secured, "PUT", "/v1/services/web/instances/web-1", "web-writer",
        {"address": "10.0.0.5", "port": 8080},
    )  # fmt: skip
    assert status == 201, reply
    before = await snapshot(secured)
    revision = before[1]
    for token, expected, missing in [
        (None, 401, "token"),
        (UNKNOWN, 401, "token"),
        ("api-writer", 403, "write"),  # a writer, but of another service
        ("reader", 403, "write"),  # a reader everywhere, a writer nowhere
    ]:
        status, reply, resp = await call(secured, method, path, token, body)
        assert (status, reply["detail"]["missing"]) == (expected, missing), reply
        if expected == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            said = "unknown token" if token else "a token is required"
            assert reply["error"].startswith(said)
        else:
            assert reply["detail"]["service"] == "web"
            assert reply["detail"]["token"] == token
        assert SECRETS.get(token or "", UNKNOWN) not in json.dumps(reply)
        assert await snapshot(secured) == before, (token, method, path)
    # The event stream holds nothing between the last accepted write and this one.
    instance_path = "/".join(path.split("/")[:6])
    status, _, _ = await call(secured, "PUT", instance_path, "ops", BODY)
    assert status in (200, 201)
    event = await first_event_after(secured, revision)
    assert event["id"] == revision + 1


async def test_a_write_token_covers_its_globs_and_nothing_else(secured: Running) -> None:
    for service, expected in [("web", 201), ("web-canary", 201), ("webshop", 403), ("api", 403)]:
        status, reply, _ = await call(
            secured, "PUT", f"/v1/services/{service}/instances/a", "web-writer", BODY
        )
        assert status == expected, (service, reply)
    for path in ["/v1/services/web-canary/instances/a/heartbeat"]:
        assert (await call(secured, "PUT", path, "web-writer"))[0] == 200
    path = "/v1/services/web-canary/instances/a/maintenance"
    assert (await call(secured, "PUT", path, "web-writer", {"enable": True}))[0] == 200
    path = "/v1/services/web-canary/instances/a"
    assert (await call(secured, "DELETE", path, "web-writer"))[0] == 200
    assert (await call(secured, "PUT", "/v1/services/api/instances/a", "api-writer", BODY))[
        0
    ] == 201


async def test_an_operator_token_can_do_everything(secured: Running) -> None:
    base = "/v1/services/anything/instances/x"
    assert (await call(secured, "PUT", base, "ops", BODY))[0] == 201
    assert (await call(secured, "PUT", base + "/heartbeat", "ops"))[0] == 200
    assert (await call(secured, "PUT", base + "/maintenance", "ops", {"enable": True}))[0] == 200
    assert (await call(secured, "DELETE", base, "ops"))[0] == 200
    assert await a_records(secured, "anything.service.local") is None


async def test_bad_input_from_an_authorised_token_is_still_a_400(secured: Running) -> None:
    status, reply, _ = await call(
        secured, "PUT", "/v1/services/web/instances/a", "web-writer", {"port": "x"}
    )
    assert status == 400, reply
    # Unauthenticated requests learn nothing about the input: 401 before validation.
    status, reply, _ = await call(secured, "PUT", "/v1/services/web_/instances/a", None, BODY)
    assert status == 401


async def test_reads_are_open_by_default_and_status_says_tokens(secured: Running) -> None:
    status, reply, _ = await call(secured, "GET", "/v1/status", None)
    assert (status, reply["auth"]) == (200, "tokens")
    assert (await call(secured, "GET", "/v1/services", None))[0] == 200
    async with secured.http.get(secured.base + "/metrics") as resp:
        assert resp.status == 200


async def test_closed_reads_need_a_token_with_read(closed_reads: Running) -> None:
    running = closed_reads
    assert (await call(running, "PUT", "/v1/services/web/instances/a", "ops", BODY))[0] == 201
    for path in ["/v1/services", "/v1/services/web", "/v1/services/web/instances/a",
                 "/v1/status", "/v1/events", "/metrics"]:  # fmt: skip
        for token in (None, UNKNOWN):
            async with running.http.get(
                running.base + path, headers=bearer(token) if token else {}
            ) as resp:
                assert resp.status == 401, (path, token)
                assert (await resp.json())["detail"] == {"missing": "token"}
        for token in ("reader", "web-writer", "ops"):
            if path == "/v1/events":
                assert (await first_event_after(running, 0))["id"] == 1
                continue
            async with running.http.get(running.base + path, headers=bearer(token)) as resp:
                assert resp.status == 200, (path, token)
    # A writer reads what it may write; another service's writer may not.
    status, reply, _ = await call(running, "GET", "/v1/services/web", "api-writer")
    assert (status, reply["detail"]["missing"]) == (403, "read")
    status, reply, _ = await call(running, "GET", "/v1/services/api", "api-writer")
    assert status == 200


async def test_writes_and_refusals_are_logged_without_secrets(
    secured: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dnsreg.audit")
    await call(secured, "PUT", "/v1/services/web/instances/a", "web-writer", BODY)
    await call(secured, "PUT", "/v1/services/web/instances/a", "reader", BODY)
    await call(secured, "PUT", "/v1/services/web/instances/a", UNKNOWN, BODY)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dnsreg.audit"]
    assert lines[0] == (logging.INFO, "register web/a by token web-writer from 127.0.0.1")
    assert lines[1][0] == logging.WARNING
    assert "from 127.0.0.1" in lines[1][1]
    assert "'reader' lacks the write right for service 'web'" in lines[1][1]
    assert lines[2][0] == logging.WARNING
    assert "unknown token" in lines[2][1]
    text = caplog.text
    assert not any(secret in text for secret in [*SECRETS.values(), UNKNOWN])


async def test_refusal_logging_is_rate_limited(
    secured: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dnsreg.audit")
    for _ in range(30):
        assert (await call(secured, "PUT", "/v1/services/web/instances/a", None, BODY))[0] == 401
    refusals = [r for r in caplog.records if r.name == "dnsreg.audit"]
    assert len(refusals) == 10  # the burst; the rest waits for the bucket to refill


async def test_open_loopback_without_an_acl_file(running: Running) -> None:
    status, reply, _ = await call(running, "GET", "/v1/status", None)
    assert reply["auth"] == "open-loopback"
    status, reply, _ = await call(running, "PUT", "/v1/services/web/instances/a", None, BODY)
    assert status == 201


async def test_a_token_header_that_is_not_utf8_is_a_401_not_a_crash(secured: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", secured.server.http_port)
    writer.write(
        b"PUT /v1/services/web/instances/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\x80abc\r\nContent-Length: 2\r\n\r\n{}"
    )
    await writer.drain()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert (await call(secured, "GET", "/v1/services", None))[1]["services"] == {}


async def test_consul_paths_take_x_consul_token_when_reads_are_closed(
    closed_reads: Running,
) -> None:
    running = closed_reads
    url = running.base + "/v1/agent/services"
    async with running.http.get(url) as resp:
        assert resp.status == 401
    for headers, params in [({"X-Consul-Token": SECRETS["reader"]}, {}),
                            ({}, {"token": SECRETS["reader"]})]:  # fmt: skip
        async with running.http.get(url, headers=headers, params=params) as resp:
            assert resp.status != 401  # past authorisation (the route itself may not exist)
    # Native routes take only the Authorization header.
    async with running.http.get(
        running.base + "/v1/services", headers={"X-Consul-Token": SECRETS["reader"]}
    ) as resp:
        assert resp.status == 401
