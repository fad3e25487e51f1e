"""dnsreg.client against a real server on loopback: as a user would write it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dnsreg.app import Server
from dnsreg.client.client import ERROR_FOR_STATUS, Client, Event
from dnsreg.config import HostPort
from dnsreg.core.errors import Conflict, DnsregError, InvalidInput, NotFound, Unreachable
from dnsreg.http.api import STATUS_FOR_ERROR
from tests.helpers import async_wait_until, make_config, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(make_config(tmp_path))
    yield srv
    await srv.stop()


def client_for(server: Server) -> Client:
    return Client(
        f"http://127.0.0.1:{server.http_port}", dns=f"127.0.0.1:{server.dns_port}", timeout=5
    )


async def restart(server: Server, data_dir: Path | None = None) -> Server:
    """Stop ``server`` and start a new one on the same ports (and data dir unless given)."""
    config = server.config
    http, dns_port = server.http_port, server.dns_port
    await server.stop()
    return await start_server(
        make_config(
            data_dir.parent if data_dir else config.data_dir.parent,
            http=HostPort("127.0.0.1", http),
            dns=HostPort("127.0.0.1", dns_port),
            data_dir=data_dir or config.data_dir,
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_register_list_show_deregister(server: Server) -> None:
    async with client_for(server) as c:
        reply = await c.register("web", "web-1", port=8080, address="10.0.0.5", tags=["primary"])
        assert reply["created"] is True
        assert reply["revision"] == 1
        await c.register("web", "web-2", port=8080, address="10.0.0.6", meta={"v": "2"})
        await c.register("db", "db-1", port=5432, address="10.0.0.7")

        services = await c.services()
        assert sorted(services) == ["db", "web"]
        assert services["web"]["instances"] == 2
        assert services.revision == 3
        assert sorted(await c.services(prefix="we")) == ["web"]

        instances = await c.instances("web")
        assert [i["id"] for i in instances] == ["web-1", "web-2"]
        assert instances.revision == 3
        assert [i["id"] for i in await c.instances("web", tag="primary")] == ["web-1"]
        assert [i["id"] for i in await c.instances("web", passing=True)] == ["web-1", "web-2"]
        assert (await c.instance("web", "web-2"))["meta"] == {"v": "2"}

        await c.deregister("web", "web-1")
        assert [i["id"] for i in await c.instances("web")] == ["web-2"]


async def test_default_id_is_host_and_port(server: Server) -> None:
    async with client_for(server) as c:
        reply = await c.register("web", port=8080, address="10.0.0.5")
        instance_id = reply["instance"]["id"]
        assert instance_id.endswith("-8080")
        again = await c.register("web", port=8080, address="10.0.0.5")
        assert again["instance"]["id"] == instance_id
        assert again["created"] is False  # the same id: a replacement, not a second instance


async def test_api_errors_are_dnsreg_errors_with_the_field(server: Server) -> None:
    async with client_for(server) as c:
        with pytest.raises(NotFound):
            await c.deregister("web", "nope")
        with pytest.raises(NotFound):
            await c.heartbeat("web", "nope")
        with pytest.raises(InvalidInput) as bad:
            await c.register("web", "a", port=80, address="not-an-ip")
        assert bad.value.field == "address"
        with pytest.raises(Conflict):
            await c.register("web", "a", port=80, address="10.0.0.1", tags=["a"])
        with pytest.raises(InvalidInput) as label:
            await c.register("web_1", "a", port=80)  # refused before any request
        assert label.value.field == "service"
    async with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        with pytest.raises(Unreachable):
            await dead.services()
    assert issubclass(Unreachable, DnsregError)


def test_error_mapping_is_the_inverse_of_the_servers() -> None:
    assert {status: kind for kind, status in STATUS_FOR_ERROR.items()} == ERROR_FOR_STATUS


async def test_blocking_read_returns_on_change(server: Server) -> None:
    async with client_for(server) as c, client_for(server) as writer:
        first = await c.instances("web")
        waiting = asyncio.create_task(c.instances("web", index=first.revision, wait="10s"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await writer.register("web", "a", port=80, address="10.0.0.1")
        after = await asyncio.wait_for(waiting, 2)
        assert after.revision == first.revision + 1
        assert [i["id"] for i in after] == ["a"]


async def test_registration_keeps_the_lease_and_deregisters_on_exit(server: Server) -> None:
    async with client_for(server) as c:
        async with c.registration("web", "web-1", port=8080, address="10.0.0.5", ttl="1s") as reg:
            assert reg.registered
            await asyncio.sleep(2.5)  # two and a half lease periods: only heartbeats keep it
            assert [i["id"] for i in await c.instances("web")] == ["web-1"]
            assert reg.registrations == 1  # kept alive by heartbeats, never re-registered
        assert await c.instances("web") == []


async def test_registration_deregisters_when_cancelled(server: Server) -> None:
    async with client_for(server) as c:
        entered = asyncio.Event()

        async def service() -> None:
            async with c.registration("web", "web-1", port=8080, address="10.0.0.5"):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(service())
        await entered.wait()
        assert len(await c.instances("web")) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.instances("web") == []


async def test_registration_registers_again_when_the_server_lost_it(server: Server) -> None:
    async with (
        client_for(server) as c,
        client_for(server) as other,
        c.registration("web", "web-1", port=8080, address="10.0.0.5", ttl="1s") as reg,
    ):
        await other.deregister("web", "web-1")  # as if the server forgot it
        await async_wait_until(lambda: reg.registrations == 2, 3)
        assert [i["id"] for i in await other.instances("web")] == ["web-1"]


async def test_registration_survives_a_server_restart(server: Server, tmp_path: Path) -> None:
    async with client_for(server) as c:
        async with c.registration("web", "web-1", port=8080, address="10.0.0.5", ttl="1s") as reg:
            # Restart on the same data dir: the instance comes back from disk.
            server = await restart(server)
            await asyncio.sleep(1.5)
            assert [i["id"] for i in await c.instances("web")] == ["web-1"]
            # Restart with an empty data dir: the server lost it; the lease keeper
            # registers it again by itself.
            server = await restart(server, data_dir=tmp_path / "fresh")
            await async_wait_until(lambda: server.registry.get("web", "web-1") is not None, 3)
            assert reg.registered
        assert server.registry.get("web", "web-1") is None
    await server.stop()


async def test_registration_waits_for_a_server_that_is_not_up_yet(tmp_path: Path) -> None:
    http, dns_port = free_port(), free_port()
    async with Client(f"http://127.0.0.1:{http}", timeout=2) as c:
        with pytest.raises(Unreachable):
            async with c.registration("web", "a", port=80, address="10.0.0.1"):
                pass
        lease = c.registration("web", "a", port=80, address="10.0.0.1", require_server=False)
        async with lease:
            assert not lease.registered
            server = await start_server(
                make_config(
                    tmp_path, http=HostPort("127.0.0.1", http), dns=HostPort("127.0.0.1", dns_port)
                )
            )
            try:
                await async_wait_until(lambda: lease.registered, 5)
                assert server.registry.get("web", "a") is not None
            finally:
                await server.stop()


async def collect(it: AsyncIterator[Event], n: int) -> list[Event]:
    out = []
    async for event in it:
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_watch_sees_changes_in_order(server: Server) -> None:
    async with client_for(server) as c, client_for(server) as writer:
        events = c.watch(prefix="web")
        first = asyncio.create_task(collect(events, 3))
        await async_wait_until(lambda: server.api is not None and server.api.events.streams == 1)
        await writer.register("web", "a", port=80, address="10.0.0.1", ttl="1s")
        await writer.register("db", "a", port=80, address="10.0.0.1")
        await writer.register("web", "b", port=80, address="10.0.0.2")
        got = await asyncio.wait_for(first, 5)
        assert [(e.kind, e.revision, e.id) for e in got] == [
            ("registered", 1, "a"),
            ("registered", 3, "b"),
            ("expired", 4, "a"),
        ]
        assert got[0].instance is not None
        assert got[0].instance["address"] == "10.0.0.1"
        assert got[2].instance is None


async def test_watch_resumes_across_a_restart_without_loss_or_repeats(server: Server) -> None:
    async with client_for(server) as c:
        received: list[Event] = []
        enough = asyncio.Event()

        async def watcher() -> None:
            async for event in c.watch():
                received.append(event)
                if len(received) == 6:
                    enough.set()

        task = asyncio.create_task(watcher())
        await async_wait_until(lambda: server.api is not None and server.api.events.streams == 1)
        async with client_for(server) as w:
            for n in range(3):
                await w.register("web", f"i{n}", port=80, address="10.0.0.1")
        await async_wait_until(lambda: len(received) == 3)
        server = await restart(server)
        async with client_for(server) as w:
            for n in range(3, 6):
                await w.register("web", f"i{n}", port=80, address="10.0.0.1")
        await asyncio.wait_for(enough.wait(), 10)
        task.cancel()
        assert [e.revision for e in received] == [1, 2, 3, 4, 5, 6]
        assert [e.id for e in received] == [f"i{n}" for n in range(6)]
    await server.stop()


async def test_watch_yields_reset_when_history_is_gone(tmp_path: Path) -> None:
    server = await start_server(make_config(tmp_path, events_buffer=5))
    try:
        async with client_for(server) as c:
            for n in range(10):
                await c.register("web", f"i{n}", port=80, address="10.0.0.1")
            it = c.watch(since=1)
            (reset,) = await asyncio.wait_for(collect(it, 1), 5)
            assert (reset.kind, reset.revision) == ("reset", 10)
            await c.register("web", "next", port=80, address="10.0.0.1")
            (event,) = await asyncio.wait_for(collect(it, 1), 5)
            assert (event.kind, event.revision, event.id) == ("registered", 11, "next")
            await it.aclose()
    finally:
        await server.stop()


async def test_resolve_returns_srv_targets_with_addresses(server: Server) -> None:
    async with client_for(server) as c:
        await c.register("web", "web-1", port=8080, address="10.0.0.5", tags=["primary"])
        await c.register("web", "web-2", port=8081, address="10.0.0.6")
        targets = await c.resolve("web")
        assert sorted((t.host, t.port, t.addresses) for t in targets) == [
            ("web-1.web.service.local", 8080, ("10.0.0.5",)),
            ("web-2.web.service.local", 8081, ("10.0.0.6",)),
        ]
        (primary,) = await c.resolve("web", tag="primary")
        assert primary.addresses == ("10.0.0.5",)
        assert await c.resolve("nothing") == []
