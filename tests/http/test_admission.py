"""Admission over real sockets (SPEC §7): registrations that would make the server a
weapon are refused with a 400 naming the field, and nothing changes.

The attacks are the ones of issue 10: a check aimed at an internal URL (SSRF) or at
other hosts' ports (a port scanner), a 100 ms interval, addresses no client can use.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import dns.rcode
import pytest
from aiohttp import web

from dnsreg.config import load_config
from dnsreg.core.acl import Right, format_entry
from dnsreg.core.errors import ConfigError
from tests.helpers import Running, make_config, start_server

Serve = Callable[..., Awaitable[Running]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    started: list[Running] = []
    async with aiohttp.ClientSession() as http:

        async def _serve(**overrides: Any) -> Running:
            server = await start_server(make_config(tmp_path, **overrides))
            running = Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
            started.append(running)
            return running

        yield _serve
        for running in started:
            await running.server.stop()


class Secret:
    """An internal-only HTTP service on 127.0.0.1 that must never be fetched for a stranger."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def key(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text="SECRET-KEY-1234")

        app = web.Application()
        app.router.add_get("/key", key)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def secret() -> AsyncIterator[Secret]:
    s = Secret()
    await s.start()
    yield s
    await s.stop()


async def put(r: Running, svc: str, iid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with r.http.put(f"{r.base}/v1/services/{svc}/instances/{iid}", json=body) as resp:
        return resp.status, await resp.json()


async def state(r: Running) -> tuple[int, Any, int]:
    """What a refused write must leave alone: revision, listing, DNS rcode of web."""
    async with r.http.get(f"{r.base}/v1/services/web") as resp:
        listing = await resp.json()
    msg = await r.query("web.service.local", "A")
    return listing["revision"], listing["instances"], msg.rcode()


def refused(status: int, reply: dict[str, Any], field: str) -> None:
    assert status == 400, reply
    assert reply["detail"]["field"] == field, reply
    assert field in reply["error"], reply


# ------------------------------------------------------------ SSRF, port scans
async def test_a_check_of_an_internal_url_is_refused(serve: Serve, secret: Secret) -> None:
    r = await serve()
    before = await state(r)
    body = {"address": "10.0.0.5", "port": 80,
            "checks": [{"http": f"http://127.0.0.1:{secret.port}/key"}]}  # fmt: skip
    status, reply = await put(r, "web", "web-1", body)
    refused(status, reply, "checks[0].http")
    assert "10.0.0.5" in reply["error"]
    assert await state(r) == before
    assert before[2] == dns.rcode.NXDOMAIN
    assert secret.hits == 0  # not even fetched once


async def test_a_tcp_check_of_another_host_is_refused(serve: Serve, secret: Secret) -> None:
    r = await serve()
    before = await state(r)
    for n, target in enumerate([f"127.0.0.1:{secret.port}", "10.0.0.6:22", "[::1]:22"]):
        body = {"address": "10.0.0.5", "port": 80,
                "checks": [{"tcp": "10.0.0.5:80"}, {"tcp": target}]}  # fmt: skip
        status, reply = await put(r, "web", f"web-{n}", body)
        refused(status, reply, "checks[1].tcp")
    assert await state(r) == before


async def test_checks_of_the_instance_itself_are_accepted(serve: Serve, secret: Secret) -> None:
    r = await serve()
    body = {"address": "127.0.0.1", "port": secret.port,
            "checks": [{"http": f"http://127.0.0.1:{secret.port}/key"},
                       {"tcp": f"127.0.0.1:{secret.port}"},
                       {"http": f"http://localhost:{secret.port}/key"}]}  # fmt: skip
    status, reply = await put(r, "web", "web-1", body)
    assert status == 201, reply


async def test_checks_any_host_lets_the_operator_check_elsewhere(
    serve: Serve, secret: Secret
) -> None:
    r = await serve(checks_any_host=True)
    body = {"address": "10.0.0.5", "port": 80,
            "checks": [{"http": f"http://127.0.0.1:{secret.port}/key"}]}  # fmt: skip
    status, reply = await put(r, "web", "web-1", body)
    assert status == 201, reply


async def test_an_operator_token_may_check_elsewhere_a_write_token_may_not(
    serve: Serve, secret: Secret, tmp_path: Path
) -> None:
    tokens = {"writer": ("s3cret-writer-0123456789", [Right.WRITE]),
              "ops": ("s3cret-ops-0123456789", [Right.OPERATOR])}  # fmt: skip
    acl = tmp_path / "acl.toml"
    acl.write_text("\n".join(
        format_entry(name, hashlib.sha256(secret_.encode()).hexdigest(), ["web"], rights)
        for name, (secret_, rights) in tokens.items()
    ))  # fmt: skip
    r = await serve(acl_file=acl)
    url = f"{r.base}/v1/services/web/instances/web-1"
    body = {"address": "10.0.0.5", "port": 80,
            "checks": [{"http": f"http://127.0.0.1:{secret.port}/key"}]}  # fmt: skip
    writer = {"Authorization": f"Bearer {tokens['writer'][0]}"}
    async with r.http.put(url, json=body, headers=writer) as resp:
        refused(resp.status, await resp.json(), "checks[0].http")
    ops = {"Authorization": f"Bearer {tokens['ops'][0]}"}
    async with r.http.put(url, json=body, headers=ops) as resp:
        assert resp.status == 201, await resp.json()


async def test_a_check_host_name_must_resolve_to_the_instance(serve: Serve) -> None:
    r = await serve()
    before = await state(r)
    # localhost resolves (/etc/hosts) to loopback only: not 10.0.0.5.
    body = {"address": "10.0.0.5", "port": 80, "checks": [{"http": "http://localhost:80/"}]}
    status, reply = await put(r, "web", "web-1", body)
    refused(status, reply, "checks[0].http")
    # RFC 6761 §6.4: .invalid never resolves.
    body = {"address": "10.0.0.5", "port": 80, "checks": [{"tcp": "nowhere.invalid:80"}]}
    status, reply = await put(r, "web", "web-1", body)
    refused(status, reply, "checks[0].tcp")
    assert "does not resolve" in reply["error"]
    # Numeric spellings that resolvers accept are resolved, not trusted as names.
    body = {"address": "10.0.0.5", "port": 80, "checks": [{"http": "http://2130706433:80/"}]}
    status, reply = await put(r, "web", "web-1", body)
    refused(status, reply, "checks[0].http")
    assert await state(r) == before


# ------------------------------------------------------------------- intervals
@pytest.mark.parametrize("interval", ["100ms", 0.1, "999ms", 0])
async def test_a_check_more_often_than_once_a_second_is_refused(
    serve: Serve, interval: object
) -> None:
    r = await serve()
    before = await state(r)
    check = {"tcp": "127.0.0.1:80", "interval": interval, "timeout": "50ms"}
    body = {"address": "127.0.0.1", "port": 80, "checks": [check]}
    status, reply = await put(r, "web", "web-1", body)
    refused(status, reply, "checks[0].interval")
    assert await state(r) == before


async def test_a_one_second_interval_is_accepted(serve: Serve) -> None:
    r = await serve()
    body = {
        "address": "127.0.0.1",
        "port": 80,
        "checks": [{"tcp": "127.0.0.1:80", "interval": "1s"}],
    }
    status, reply = await put(r, "web", "web-1", body)
    assert status == 201, reply


# ------------------------------------------------------------------- addresses
BAD_ADDRESSES = ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
async def test_addresses_no_client_can_use_are_refused(serve: Serve, address: str) -> None:
    r = await serve()
    status, reply = await put(r, "web", "web-1", {"address": "10.0.0.5", "port": 80})
    assert status == 201, reply
    before = await state(r)
    for iid in ("web-1", "web-2"):  # replacing an existing instance, and a new one
        status, reply = await put(r, "web", iid, {"address": address, "port": 80})
        refused(status, reply, "address")
        assert str(ipaddress.ip_address(address)) in reply["error"]
    assert await state(r) == before
    msg = await r.query("web.service.local", "AAAA" if ":" in address else "A")
    assert address not in " ".join(rrset.to_text() for rrset in msg.answer)


async def test_loopback_stays_allowed(serve: Serve) -> None:
    r = await serve()
    for iid, address in (("a", "127.0.0.1"), ("b", "::1")):
        status, reply = await put(r, "web", iid, {"address": address, "port": 80})
        assert status == 201, reply


async def test_allowed_networks_limit_registrations(serve: Serve) -> None:
    r = await serve(
        allowed_networks=load_config(
            env={"DNSREG_ALLOWED_NETWORKS": "10.0.0.0/8, fd00::/8"}
        ).allowed_networks
    )
    for iid, address in (("a", "10.1.2.3"), ("b", "fd00::5")):
        status, reply = await put(r, "web", iid, {"address": address, "port": 80})
        assert status == 201, reply
    before = await state(r)
    for address in ("192.168.1.10", "127.0.0.1", "2001:db8::1"):
        status, reply = await put(r, "web", "c", {"address": address, "port": 80})
        refused(status, reply, "address")
        assert reply["detail"]["allowed_networks"] == ["10.0.0.0/8", "fd00::/8"]
        assert "10.0.0.0/8, fd00::/8" in reply["error"]
    assert await state(r) == before


def test_allowed_networks_config(tmp_path: Path) -> None:
    path = tmp_path / "dnsreg.toml"
    path.write_text('allowed_networks = ["10.0.0.0/8", "2001:db8::/32"]\nchecks_any_host = true\n')
    cfg = load_config({"config": str(path)}, env={})
    assert [str(n) for n in cfg.allowed_networks] == ["10.0.0.0/8", "2001:db8::/32"]
    assert cfg.checks_any_host is True
    assert load_config(env={}).admission.checks_any_host is False
    for bad in ('["10.0.0.1/8"]', '["10.0.0.0/33"]', '["web"]', "[10]", "10"):
        path.write_text(f"allowed_networks = {bad}\n")
        with pytest.raises(ConfigError, match="allowed_networks"):
            load_config({"config": str(path)}, env={})
    with pytest.raises(ConfigError, match="checks_any_host"):
        load_config(env={"DNSREG_CHECKS_ANY_HOST": "perhaps"})


async def test_the_consul_route_applies_the_same_rules(serve: Serve, secret: Secret) -> None:
    r = await serve()
    before = await state(r)
    url = f"{r.base}/v1/agent/service/register"
    base = {"Name": "web", "ID": "web-1", "Port": 80}
    attacks = [
        ({"Address": "10.0.0.5", "Check": {"HTTP": f"http://127.0.0.1:{secret.port}/key",
                                           "Interval": "10s"}}, "checks[0].http"),
        ({"Address": "10.0.0.5", "Check": {"TCP": "10.0.0.5:80", "Interval": "100ms"}},
         "Check.interval"),
        ({"Address": "0.0.0.0"}, "address"),
        ({"Address": "ff02::1"}, "address"),
    ]  # fmt: skip
    for extra, field in attacks:
        async with r.http.put(url, json={**base, **extra}) as resp:
            text = await resp.text()
            assert resp.status == 400, text
            assert field in text, text
    assert await state(r) == before
    assert secret.hits == 0
    ok = {**base, "Address": "127.0.0.1",
          "Check": {"HTTP": f"http://127.0.0.1:{secret.port}/key", "Interval": "10s"}}  # fmt: skip
    async with r.http.put(url, json=ok) as resp:
        assert resp.status == 200, await resp.text()
