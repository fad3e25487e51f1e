"""Self-preservation cannot be tripped by throw-away registrations (SPEC §7), on a fake clock.

The attack of issue 10: a stream of registrations with 1 s leases that are
never renewed lapse all the time; counted, they made "most leases lapsing"
true, expiry paused, and instances that had really died stayed in DNS. Only
leases renewed at least once count now; a never-renewed lease expires as usual,
even while the guard holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dnsreg.core.preservation import guard_verdict
from dnsreg.store.sqlite import SqliteStore
from tests.helpers import FakeClock, Running, make_config, start_server

REAL = 20
TTL = 30


@pytest.fixture
async def r(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path), clock=clock)
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()


async def served(r: Running) -> set[str]:
    msg = await r.query("web.service.local", "A", tcp=True)
    return {item.address for rrset in msg.answer for item in rrset}


async def heartbeat(r: Running, iid: str) -> None:
    async with r.http.put(f"{r.base}/v1/services/web/instances/{iid}/heartbeat") as resp:
        assert resp.status == 200


async def test_throw_away_leases_do_not_pause_expiry(r: Running, clock: FakeClock) -> None:
    store = r.server.store
    assert isinstance(store, SqliteStore)
    for n in range(REAL):
        await r.register("web", f"real{n}", address=f"10.0.7.{n + 1}", ttl=TTL)
    dead = {f"real{n}" for n in range(3)}
    start = clock()
    expired: dict[str, float] = {}
    for second in range(1, 71):
        # The attacker: 30 fresh 1 s leases every second, never renewed.
        for k in range(30):
            await r.register("web", f"junk{second}-{k}", address=f"10.0.8.{k + 1}", ttl=1)
        clock.advance(1)
        # The living heartbeat every 10 s; the dead stopped after their first one, at 10 s.
        if second % 10 == 0:
            for n in range(REAL):
                iid = f"real{n}"
                if iid not in dead or second == 10:
                    await heartbeat(r, iid)
        await store.expire_now()  # the store's own timer may get there first: look, don't count
        for n in range(REAL):
            iid = f"real{n}"
            if iid not in expired and r.server.registry.get("web", iid) is None:
                expired[iid] = clock() - start
        assert not store.self_preservation()["active"], second
    # The dead left at their deadline (last heartbeat at 10 s + 30 s), within a second.
    assert set(expired) == dead
    assert all(40 <= t <= 41 for t in expired.values()), expired
    addresses = await served(r)
    assert {f"10.0.7.{n + 1}" for n in range(3)}.isdisjoint(addresses)
    assert {f"10.0.7.{n + 1}" for n in range(3, REAL)} <= addresses
    # What the attack aimed at: counted, the throw-aways would have held expiry
    # (30 lapsing junk leases + 3 dead of 50 is well over half).
    assert guard_verdict(33, 50, 0.5).hold


async def test_a_partition_of_renewed_leases_still_pauses(r: Running, clock: FakeClock) -> None:
    store = r.server.store
    assert isinstance(store, SqliteStore)
    for n in range(REAL):
        await r.register("web", f"real{n}", address=f"10.0.7.{n + 1}", ttl=TTL)
    clock.advance(10)
    for n in range(REAL):
        await heartbeat(r, f"real{n}")
    # The registry's network fails: no heartbeat arrives any more. Throw-aways
    # registered meanwhile (say, from the same host) still come and go.
    for second in range(1, 41):
        await r.register("web", f"junk{second}", address="10.0.8.1", ttl=1)
        clock.advance(1)
        await store.expire_now()
        assert all(r.server.registry.get("web", f"real{n}") for n in range(REAL)), second
    guard = store.self_preservation()
    assert guard["active"] is True
    assert (guard["lapsing"], guard["leases"]) == (REAL, REAL)  # the junk is not counted
    assert len(await served(r) & {f"10.0.7.{n + 1}" for n in range(REAL)}) == REAL
    # Junk registered while the guard holds expires as usual.
    await r.register("web", "junk-late", address="10.0.8.2", ttl=1)
    clock.advance(1.5)
    await store.expire_now()
    assert r.server.registry.get("web", "junk-late") is None
    assert "10.0.8.2" not in await served(r)
    assert store.self_preservation()["active"] is True
    # Heartbeats return for 15 of the 20: the guard lets go and the 5 silent expire.
    for n in range(15):
        await heartbeat(r, f"real{n}")
    await store.expire_now()
    left = sorted(i.reg.id for i in r.server.registry.instances("web").values())
    assert left == sorted(f"real{n}" for n in range(15))
    assert store.self_preservation()["active"] is False
    assert len(await served(r)) == 15
