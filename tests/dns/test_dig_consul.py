"""dig against Consul's names with ``alt_domain = "consul"`` (issue 13)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Running, make_config, start_server

DIG = shutil.which("dig")

pytestmark = [
    pytest.mark.dig,
    pytest.mark.skipif(DIG is None, reason="dig is not on PATH (apt-get install bind9-dnsutils)"),
]


async def dig(running: Running, *args: str) -> str:
    assert DIG is not None
    proc = await asyncio.create_subprocess_exec(
        DIG, "@127.0.0.1", "-p", str(running.dns_port), "+time=2", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return out.decode()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path, alt_domain="consul"))
    async with aiohttp.ClientSession() as http:
        running = Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
        for n, tags in [(1, ["primary"]), (2, [])]:
            body = {"Name": "web", "ID": f"web-{n}", "Address": f"10.0.0.{n}", "Port": 8080,
                    "Tags": tags}  # fmt: skip
            async with http.put(running.base + "/v1/agent/service/register", json=body) as resp:
                assert resp.status == 200, await resp.text()
        yield running
    await server.stop()


async def test_dig_consul_names(running: Running) -> None:
    assert sorted((await dig(running, "+short", "web.service.consul")).split()) == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert (await dig(running, "+short", "primary.web.service.consul")).split() == ["10.0.0.1"]
    srv = await dig(running, "+short", "_web._primary.service.consul", "SRV")
    assert srv.split() == ["0", "1", "8080", "web-1.web.service.consul."]
    soa = await dig(running, "+short", "service.consul", "SOA")
    assert soa.split()[:2] == ["ns.service.consul.", "hostmaster.service.consul."]
    missing = await dig(running, "nope.service.consul")
    assert "status: NXDOMAIN" in missing
    assert "flags: qr aa" in missing
