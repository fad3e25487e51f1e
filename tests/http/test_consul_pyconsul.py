"""Issue 13 with a real Consul client: py-consul (PyPI), unmodified, against a dnsreg server.

py-consul is synchronous (requests), so its calls run in a worker thread while
the server runs on the test's event loop. What it registers must show in
dnsreg's own API and in DNS under the Consul names (``alt_domain = "consul"``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import consul
import dns.rcode
import pytest
from aiohttp import web

from tests.helpers import Running, async_wait_until, make_config, start_server

T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path, alt_domain="consul"))
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()


@pytest.fixture
def client(running: Running) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=running.server.http_port)


class Target:
    """An HTTP health endpoint whose answer the test flips."""

    def __init__(self) -> None:
        self.status = 200
        self.port = 0


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    state = Target()

    async def health(_request: web.Request) -> web.Response:
        return web.Response(status=state.status, text="ok" if state.status == 200 else "down")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    yield state
    await runner.cleanup()


async def a_records(running: Running, name: str) -> list[str] | None:
    msg = await running.query(name, "A")
    if msg.rcode() == dns.rcode.NXDOMAIN:
        return None
    return sorted(r.to_text() for rr in msg.answer for r in rr)


async def passing_ids(client: consul.Consul, service: str) -> list[str]:
    _, nodes = await call(client.health.service, service, passing=True)
    return sorted(n["Service"]["ID"] for n in nodes)


async def test_py_consul_register_health_ttl_maintenance_deregister(
    running: Running, client: consul.Consul, target: Target
) -> None:
    http_check = consul.Check.http(
        f"http://127.0.0.1:{target.port}/health", interval="1s", timeout="1s"
    )
    ok = await call(
        client.agent.service.register,
        "web",
        service_id="web-py",
        address="127.0.0.1",
        port=8080,
        tags=["primary"],
        meta={"Version": "1.2"},
        check=http_check,
        extra_checks=[{"TTL": "30s", "CheckID": "web-py-ttl", "Name": "heartbeat"}],
    )
    assert ok is True
    assert await call(
        client.agent.service.register, "web", service_id="web-2", address="127.0.0.2", port=8081
    )

    index, services = await call(client.catalog.services)
    assert services == {"web": ["primary"]}
    # The registry revision when the read ran (the HTTP check's first result may follow).
    assert 2 <= int(index) <= running.server.registry.revision

    # The TTL check starts critical (as in Consul): web-py is not passing until reported.
    assert await passing_ids(client, "web") == ["web-2"]
    assert await call(client.agent.check.ttl_pass, "web-py-ttl", "all good")
    await async_wait_until(
        lambda: running.server.registry.get("web", "web-py").health.value == "passing"
    )
    assert await passing_ids(client, "web") == ["web-2", "web-py"]
    _, checks = await call(client.health.checks, "web")
    by_id = {c["CheckID"]: c for c in checks}
    assert by_id["web-py-ttl"]["Status"] == "passing"
    assert by_id["web-py-ttl"]["Output"] == "all good"
    assert by_id["web-py-ttl"]["Name"] == "heartbeat"
    assert by_id["service:web-py:1"]["Type"] == "http"

    # Same service in dnsreg's own API and in DNS, native and Consul names.
    async with running.http.get(running.base + "/v1/services/web/instances/web-py") as resp:
        native = (await resp.json())["instance"]
    assert native["ttl"] == 0  # Consul services have no lease
    assert native["tags"] == ["primary"]
    assert native["meta"] == {"Version": "1.2"}
    assert [c["kind"] for c in native["check_status"]] == ["http", "ttl"]
    assert await a_records(running, "primary.web.service.local") == ["127.0.0.1"]
    assert await a_records(running, "primary.web.service.consul") == ["127.0.0.1"]
    assert await a_records(running, "web.service.consul") == ["127.0.0.1", "127.0.0.2"]

    # The HTTP check fails: web-py leaves ?passing and DNS.
    target.status = 500
    await async_wait_until(
        lambda: running.server.registry.get("web", "web-py").health.value == "critical"
    )
    assert await passing_ids(client, "web") == ["web-2"]
    assert await a_records(running, "web.service.consul") == ["127.0.0.2"]
    target.status = 200
    await async_wait_until(lambda: running.server.registry.get("web", "web-py").served)

    # ttl_fail makes it critical at once (FailuresBeforeCritical 0).
    assert await call(client.agent.check.ttl_fail, "web-py-ttl", "broken")
    assert await passing_ids(client, "web") == ["web-2"]
    assert await call(client.agent.check.ttl_pass, "web-py-ttl")
    assert await passing_ids(client, "web") == ["web-2", "web-py"]

    # Maintenance: Consul's maintenance check, out of ?passing and DNS, and back.
    assert await call(client.agent.service.maintenance, "web-2", True, "deploying")
    _, nodes = await call(client.health.service, "web")
    web2 = next(n for n in nodes if n["Service"]["ID"] == "web-2")
    assert web2["Checks"][0]["CheckID"] == "_service_maintenance:web-2"
    assert web2["Checks"][0]["Status"] == "critical"
    assert web2["Checks"][0]["Notes"] == "deploying"
    assert await passing_ids(client, "web") == ["web-py"]
    assert await a_records(running, "web.service.consul") == ["127.0.0.1"]
    assert await call(client.agent.service.maintenance, "web-2", False)
    assert await passing_ids(client, "web") == ["web-2", "web-py"]

    services_by_id = await call(client.agent.services)
    assert services_by_id["web-py"]["Service"] == "web"
    assert services_by_id["web-py"]["Port"] == 8080

    # Deregister: gone from Consul's view, the native API and DNS.
    assert await call(client.agent.service.deregister, "web-py")
    assert await passing_ids(client, "web") == ["web-2"]
    assert running.server.registry.get("web", "web-py") is None
    assert await a_records(running, "web.service.consul") == ["127.0.0.2"]
    # Unknown IDs are Consul's 404 with its plain-text message (py-consul: False).
    assert await call(client.agent.service.deregister, "web-py") is False
    async with running.http.put(running.base + "/v1/agent/service/deregister/web-py") as resp:
        assert resp.status == 404
        assert (await resp.text()).startswith('Unknown service ID "web-py"')


async def test_py_consul_blocking_query_wakes_within_100ms(
    running: Running, client: consul.Consul
) -> None:
    assert await call(client.agent.service.register, "api", service_id="api-1", port=80,
                      address="127.0.0.1")  # fmt: skip
    index, nodes = await call(client.health.service, "api")
    assert [n["Service"]["ID"] for n in nodes] == ["api-1"]
    woken = asyncio.get_running_loop().create_future()

    def blocking() -> None:
        result = client.health.service("api", index=index, wait="10s")
        asyncio.run_coroutine_threadsafe(_set(woken, (time.monotonic(), result)), loop)

    loop = asyncio.get_running_loop()
    thread = asyncio.create_task(asyncio.to_thread(blocking))
    await async_wait_until(
        lambda: running.server.api is not None and running.server.api.events.blocked == 1
    )
    assert not woken.done()
    changed_at = time.monotonic()
    assert await call(client.agent.service.register, "api", service_id="api-2", port=80,
                      address="127.0.0.2")  # fmt: skip
    woke_at, (new_index, nodes) = await asyncio.wait_for(woken, 5)
    await thread
    assert woke_at - changed_at < 0.1
    assert int(new_index) > int(index)
    assert sorted(n["Service"]["ID"] for n in nodes) == ["api-1", "api-2"]


async def _set(future: asyncio.Future[Any], value: Any) -> None:
    future.set_result(value)


async def test_ttl_check_goes_critical_when_not_passed_in_time(
    running: Running, client: consul.Consul
) -> None:
    assert await call(client.agent.service.register, "job", service_id="job-1", port=9000,
                      address="127.0.0.1", check=consul.Check.ttl("1s"))  # fmt: skip
    passed = time.monotonic()  # the server counts the TTL from the report, which is later
    assert await call(client.agent.check.ttl_pass, "service:job-1")
    assert await passing_ids(client, "job") == ["job-1"]
    await async_wait_until(
        lambda: running.server.registry.get("job", "job-1").health.value == "critical", within=5
    )
    assert time.monotonic() - passed >= 0.95
    _, checks = await call(client.health.checks, "job")
    assert checks[0]["Status"] == "critical"
    assert checks[0]["Output"].startswith("TTL expired")
    assert await a_records(running, "job.service.consul") == []


async def test_deregister_critical_service_after_reaps_a_silent_ttl_service(
    running: Running, client: consul.Consul
) -> None:
    check = {"TTL": "1s", "DeregisterCriticalServiceAfter": "1s"}
    assert await call(client.agent.service.register, "gone", service_id="gone-1", port=9000,
                      address="127.0.0.1", check=check)  # fmt: skip
    await async_wait_until(lambda: running.server.registry.get("gone", "gone-1") is None, within=6)
    _, services = await call(client.catalog.services)
    assert "gone" not in services


async def test_agent_self_status_and_unsupported_apis(
    running: Running, client: consul.Consul
) -> None:
    me = await call(client.agent.self)
    assert me["Config"]["Datacenter"] == "dc1"
    assert me["Member"]["Addr"] == "127.0.0.1"
    leader = await call(client.status.leader)
    assert leader == f"127.0.0.1:{running.server.http_port}"
    assert await call(client.status.peers) == [leader]
    # KV, sessions, ACL, Connect: 404 saying so (without an index header, so that
    # py-consul raises instead of reporting an absent key).
    with pytest.raises(consul.ConsulException):
        await call(client.kv.get, "config/web")
    for method, path, what in [
        ("GET", "/v1/kv/config/web", "the KV store"),
        ("PUT", "/v1/session/create", "sessions"),
        ("GET", "/v1/acl/tokens", "the ACL API"),
        ("GET", "/v1/agent/connect/ca/roots", "Connect"),
    ]:
        async with running.http.request(method, running.base + path) as resp:
            assert resp.status == 404
            assert f"does not implement {what}" in await resp.text()


async def test_refused_register_changes_nothing(running: Running, client: consul.Consul) -> None:
    cases = [
        ({"Name": "web", "Port": 80, "Bogus": 1, "Check": {"TTL": "5s", "Script": "x"}},
         "unknown or unsupported field(s): Bogus, Check.Script"),
        ({"Name": "web_api", "Port": 80}, "Name: 'web_api' is not a DNS label"),
        ({"Name": "web"}, "Port: required"),
        ({"Name": "web", "Port": 80, "Check": {"HTTP": "http://127.0.0.1/"}},
         "Check.Interval: required"),
        ({"Name": "web", "Port": 80, "Check": {"TTL": "soon"}}, "Check.TTL"),
        ({"Name": "web", "Port": "80"}, "Expected `int | null`, got `str` - at `$.Port`"),
    ]  # fmt: skip
    big = {"Name": "web", "Port": 80, "Meta": {f"k{n}": "v" * 200 for n in range(400)}}
    cases.append((big, "Request body too large"))
    revision = running.server.registry.revision
    for body, message in cases:
        async with running.http.put(running.base + "/v1/agent/service/register", json=body) as resp:
            text = await resp.text()
            assert resp.status == (413 if body is big else 400), (body, text)
            assert resp.content_type == "text/plain"
            assert message in text, (body, text)
    assert running.server.registry.revision == revision
    _, services = await call(client.catalog.services)
    assert services == {}


async def test_catalog_service_shape_and_tag_filter(
    running: Running, client: consul.Consul
) -> None:
    for n, tags in enumerate([["primary", "v1"], ["v1"]], start=1):
        assert await call(client.agent.service.register, "db", service_id=f"db-{n}",
                          address=f"10.0.0.{n}", port=5432, tags=tags)  # fmt: skip
    _, rows = await call(client.catalog.service, "db", tag="primary")
    assert [r["ServiceID"] for r in rows] == ["db-1"]
    row = rows[0]
    assert row["ServiceAddress"] == "10.0.0.1"
    assert row["ServicePort"] == 5432
    assert row["ServiceTags"] == ["primary", "v1"]
    assert row["ServiceTaggedAddresses"]["wan_ipv4"] == {"Address": "10.0.0.1", "Port": 5432}
    assert row["TaggedAddresses"]["lan_ipv4"] == "127.0.0.1"
    assert row["Datacenter"] == "dc1"
    assert row["Address"] == "127.0.0.1"
    _, rows = await call(client.catalog.service, "db")
    assert [r["ServiceID"] for r in rows] == ["db-1", "db-2"]
    _, critical = await call(client.health.state, "critical")
    assert critical == []


async def test_empty_registry_index_is_1_and_blocks_until_the_first_change(
    running: Running, client: consul.Consul
) -> None:
    async with running.http.get(running.base + "/v1/catalog/services") as resp:
        assert resp.headers["X-Consul-Index"] == "1"
        assert resp.headers["X-Consul-KnownLeader"] == "true"
        assert resp.headers["X-Consul-LastContact"] == "0"
        assert await resp.json() == {}
    blocked = asyncio.create_task(call(client.catalog.services, index="1", wait="10s"))
    await async_wait_until(
        lambda: running.server.api is not None and running.server.api.events.blocked == 1
    )
    assert not blocked.done()
    assert await call(client.agent.service.register, "first", port=80, address="127.0.0.1")
    index, services = await asyncio.wait_for(blocked, 5)
    assert services == {"first": []}
    assert index == "1"  # revision 1: the first change


async def test_check_update_warn_and_errors_as_consul_gives_them(
    running: Running, client: consul.Consul
) -> None:
    ttl, tcp = {"TTL": "30s", "CheckID": "beat"}, {"TCP": "127.0.0.1:9", "Interval": "10s"}
    assert await call(client.agent.service.register, "web", service_id="w1", port=80,
                      address="127.0.0.1", check=ttl, extra_checks=[tcp])  # fmt: skip
    base = running.base + "/v1/agent/check"
    async with running.http.put(
        base + "/update/beat", json={"status": "warning", "output": "slow"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    instance = running.server.registry.get("web", "w1")
    assert instance is not None
    assert instance.checks[0].state.value == "warning"
    assert instance.checks[0].output == "slow"
    checks_seen = await call(client.agent.checks)
    assert checks_seen["beat"]["Status"] == "warning"
    assert await call(client.agent.check.ttl_warn, "beat", "still slow")
    for method, path, body, status, text in [
        (
            "PUT",
            "/pass/service:w1:2",
            None,
            400,
            'CheckID "service:w1:2" does not have associated TTL',
        ),
        ("PUT", "/pass/nope", None, 404, 'Unknown check ID "nope"'),
        ("PUT", "/update/beat", {"Status": "sunny"}, 400, "Status"),
        ("PUT", "/update/beat", {"Status": "passing", "Colour": "red"}, 400, "Colour"),
    ]:
        async with running.http.request(method, base + path, json=body) as resp:
            assert resp.status == status, path
            assert resp.content_type == "text/plain"
            assert text in await resp.text(), path
    for query, text in [("?dc=dc2", "No path to datacenter 'dc2'"), ("?filter=x", "?filter=")]:
        async with running.http.get(running.base + "/v1/health/service/web" + query) as resp:
            assert resp.status == 400
            assert text in await resp.text()
    async with running.http.put(running.base + "/v1/agent/service/maintenance/w1") as resp:
        assert resp.status == 400
        assert "Missing value for enable" in await resp.text()
    async with running.http.get(running.base + "/v1/health/state/sunny") as resp:
        assert resp.status == 400
    # Nothing above changed the check.
    instance = running.server.registry.get("web", "w1")
    assert instance is not None
    assert instance.checks[0].output == "still slow"
    assert instance.maintenance is None


async def test_consul_services_and_their_checks_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, alt_domain="consul")
    server = await start_server(config)
    try:
        client = consul.Consul(host="127.0.0.1", port=server.http_port)
        check = {"TTL": "30s", "CheckID": "keep-alive", "Name": "alive"}
        assert await call(client.agent.service.register, "keep", service_id="keep-1", port=70,
                          address="127.0.0.1", check=check)  # fmt: skip
        assert await call(client.agent.check.ttl_pass, "keep-alive", "up")
    finally:
        await server.stop()
    server = await start_server(config)
    try:
        client = consul.Consul(host="127.0.0.1", port=server.http_port)
        _, nodes = await call(client.health.service, "keep", passing=True)
        assert [n["Service"]["ID"] for n in nodes] == ["keep-1"]
        (seen,) = nodes[0]["Checks"]
        assert (seen["CheckID"], seen["Name"], seen["Output"]) == ("keep-alive", "alive", "up")
        assert await call(client.agent.check.ttl_fail, "keep-alive", "down")
        _, nodes = await call(client.health.service, "keep", passing=True)
        assert nodes == []
    finally:
        await server.stop()


async def test_native_registrations_show_in_consul_views(
    running: Running, client: consul.Consul
) -> None:
    await running.register(
        "api", "api-1", address="10.0.0.7", port=9090, tags=["blue"], meta={"team": "core"},
        checks=[{"tcp": "10.0.0.7:9", "interval": "10s"}],
    )  # fmt: skip
    _, services = await call(client.catalog.services)
    assert services == {"api": ["blue"]}
    _, nodes = await call(client.health.service, "api")
    (node,) = nodes
    assert node["Service"]["ID"] == "api-1"
    assert node["Service"]["Meta"] == {"team": "core"}
    assert [c["CheckID"] for c in node["Checks"]] == ["service:api-1"]
    assert node["Checks"][0]["Type"] == "tcp"
    assert node["Checks"][0]["Interval"] == "10s"
    assert await call(client.agent.service.deregister, "api-1")
    assert running.server.registry.get("api", "api-1") is None
