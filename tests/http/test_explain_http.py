"""``GET /v1/explain`` over HTTP, and ``dnsreg explain`` against the same server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp

from tests.helpers import Running, make_config, start_server


async def explain(running: Running, **params: str) -> tuple[int, dict[str, object]]:
    async with running.http.get(running.base + "/v1/explain", params=params) as resp:
        return resp.status, await resp.json()


async def test_explain_matches_what_dns_answers(running: Running) -> None:
    await running.register("web", "web-1", address="10.0.0.5", ttl=0)
    await running.register("web", "web-2", address="10.0.0.6", ttl=0)
    url = running.base + "/v1/services/web/instances/web-2/maintenance"
    async with running.http.put(url, json={"enable": True, "reason": "deploy 42"}) as resp:
        assert resp.status == 200
    status, body = await explain(running, name="web.service.local", type="a")
    assert status == 200
    reply = await running.query("web.service.local", "A")
    dig_lines = [line for rrset in reply.answer for line in rrset.to_text().splitlines()]
    assert body["rcode"] == "NOERROR"
    assert body["answer"] == [line.replace("\t", " ") for line in dig_lines]
    instances = {i["id"]: i for i in body["instances"]}  # type: ignore[attr-defined]
    assert instances["web-1"]["in_answer"] is True
    assert instances["web-2"]["in_answer"] is False
    assert instances["web-2"]["reasons"] == [
        {"code": "maintenance", "text": 'in maintenance ("deploy 42")'}
    ]


async def test_explain_expired_lease_over_http(running: Running) -> None:
    await running.register("api", "api-1", address="10.0.1.1", ttl="1s")
    await running.register("api", "api-2", address="10.0.1.2", ttl=0)
    hub = running.server.api.events if running.server.api is not None else None
    assert hub is not None
    async with asyncio.timeout(5):  # the lease is 1 s; expiry is an event, not a poll
        while running.server.registry.get("api", "api-1") is not None:
            await hub.wait(hub.log.head, 3.0, service="api")
    status, body = await explain(running, name="api.service.local")
    assert status == 200
    (gone,) = [i for i in body["instances"] if i["id"] == "api-1"]  # type: ignore[attr-defined]
    assert gone["in_answer"] is False
    assert gone["reasons"][0]["code"] == "lease_expired"
    assert "without a heartbeat" in gone["reasons"][0]["text"]


async def test_explain_bad_input_is_a_400_naming_the_field(running: Running) -> None:
    for params, field in (({"name": ""}, "name"), ({"name": "a.b", "type": "XX"}, "type")):
        status, body = await explain(running, **params)
        assert status == 400
        assert body["detail"] == {"field": field}


async def test_cli_explain(running: Running) -> None:
    await running.register("web", "web-1", address="10.0.0.5", ttl=0, tags=["eu"])
    await running.register("web", "web-2", address="10.0.0.6", ttl=0, tags=["us"])
    env = dict(os.environ, DNSREG_API=running.base)

    async def dnsreg(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dnsreg", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await dnsreg("explain", "eu.web.service.local")
    assert code == 0
    assert out.splitlines() == [
        ";; eu.web.service.local. A: status NOERROR, flags aa",
        ";; ANSWER SECTION:",
        "eu.web.service.local. 5 IN A 10.0.0.5",
        ";; instances of web:",
        "web-1  10.0.0.5:8080  in the answer",
        "web-2  10.0.0.6:8080  NOT in the answer: tag mismatch: lacks tag(s) eu (has: us)",
    ]
    code, out, _ = await dnsreg("explain", "nosuch.service.local", "AAAA")
    assert code == 0
    assert out.splitlines()[:2] == [
        ";; nosuch.service.local. AAAA: status NXDOMAIN, flags aa",
        ";; no service 'nosuch' is registered in service.local.",
    ]
    code, _, err = await dnsreg("explain", "web.service.local", "NOPE")
    assert code == 1
    assert err.strip() == "dnsreg: type: 'NOPE' is not a DNS record type"


async def test_closed_reads_close_explain_but_not_the_dashboard_files(tmp_path: Path) -> None:
    import hashlib

    from dnsreg.core.acl import Right, format_entry

    secret = "s3cret-reader-0123456789abcdef"
    acl = tmp_path / "acl.toml"
    acl.write_text(
        format_entry("reader", hashlib.sha256(secret.encode()).hexdigest(), ["*"], [Right.READ])
    )
    server = await start_server(make_config(tmp_path, acl_file=acl, acl_reads="token"))
    base = f"http://127.0.0.1:{server.http_port}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/ui/", "/ui/app.js", "/ui/app.css"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
            async with http.get(base + "/", allow_redirects=False) as resp:
                assert resp.status == 302
            params = {"name": "web.service.local"}
            async with http.get(base + "/v1/explain", params=params) as resp:
                assert resp.status == 401
            headers = {"Authorization": f"Bearer {secret}"}
            async with http.get(base + "/v1/explain", params=params, headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["rcode"] == "NXDOMAIN"
    finally:
        await server.stop()
