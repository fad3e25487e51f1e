"""Several dnsreg nodes on one real etcd: sharing, expiry, failover, staleness, resync.

Every test here runs real etcd processes (tests/etcd_fixtures.py) and real
dnsreg servers on loopback sockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
from aiohttp import web

from dnsreg.app import Server
from dnsreg.core.registry import Change, ChangeKind
from dnsreg.store.etcd import EtcdStore
from tests.helpers import make_config
from tests.store.etcd_fixtures import (  # noqa: F401 - fixtures
    EtcdCluster,
    Proxy,
    etcd3_fixture,
    etcd_fixture,
    needs_etcd,
    poll,
)

pytestmark = needs_etcd
EDE_STALE = 3  # RFC 8914 §4.4 "Stale Answer"


@dataclass
class Node:
    """One in-process dnsreg server on an etcd store, with a client and its change log."""

    server: Server
    http: aiohttp.ClientSession
    changes: list[Change] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def store(self) -> EtcdStore:
        store = self.server.store
        assert isinstance(store, EtcdStore)
        return store

    @property
    def revision(self) -> int:
        return self.server.registry.revision

    async def query(
        self, name: str, rdtype: str = "A", *, within: float = 2.0
    ) -> dns.message.Message:
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), use_edns=0)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.server.dns_port, timeout=within)

    async def addresses(self, name: str) -> set[str]:
        msg = await self.query(name)
        return {r.to_text() for rrset in msg.answer for r in rrset}

    async def put(
        self, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.put(self.base + path, json=body or {}) as resp:
            return resp.status, await resp.json()

    async def register(self, service: str, id: str, **body: Any) -> dict[str, Any]:
        body.setdefault("address", "10.0.0.5")
        body.setdefault("port", 8080)
        status, reply = await self.put(f"/v1/services/{service}/instances/{id}", body)
        assert status in (200, 201), reply
        return reply

    async def delete(self, service: str, id: str) -> tuple[int, dict[str, Any]]:
        async with self.http.delete(f"{self.base}/v1/services/{service}/instances/{id}") as resp:
            return resp.status, await resp.json()

    async def status(self) -> dict[str, Any]:
        async with self.http.get(self.base + "/v1/status") as resp:
            body: dict[str, Any] = await resp.json()
            return body


@contextlib.asynccontextmanager
async def nodes(tmp_path: Path, *urls: str, **overrides: Any) -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    async with aiohttp.ClientSession() as http:
        try:
            for n, url in enumerate(urls):
                root = tmp_path / f"node{n}"
                root.mkdir(parents=True)
                server = Server(make_config(root, store=url, **overrides))
                await server.start()
                node = Node(server, http)
                server.store.subscribe(node.changes.append)  # type: ignore[union-attr]
                started.append(node)
            yield started
        finally:
            for node in started:
                await node.server.stop()


def kinds(node: Node, id: str) -> list[ChangeKind]:
    return [c.kind for c in node.changes if c.id == id]


def ede_codes(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.options if isinstance(o, dns.edns.EDEOption)]


# ------------------------------------------------------------------------ sharing
async def test_two_nodes_answer_the_same_registry_at_the_same_revision(
    etcd: EtcdCluster,
    tmp_path: Path,
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, url) as (a, b):
        reply = await a.register("web", "web-1", address="10.0.0.5", tags=["primary"])
        acked = time.monotonic()
        # Read-your-writes: the node that took the write answers it at once.
        assert await a.addresses("web.service.local") == {"10.0.0.5"}
        await poll(lambda: b.addresses("web.service.local"), within=1, interval=0.002)
        seen_on_b = time.monotonic() - acked
        assert seen_on_b < 0.1, f"B answered {seen_on_b * 1000:.0f} ms after A acknowledged"
        assert await b.addresses("primary.web.service.local") == {"10.0.0.5"}

        # One revision everywhere: the API, the SOA serial, and the change each node saw.
        assert reply["revision"] == a.revision == b.revision
        soa_a = (await a.query("service.local", "SOA")).answer[0][0].serial
        soa_b = (await b.query("service.local", "SOA")).answer[0][0].serial
        assert soa_a == soa_b == reply["revision"]
        assert [c.revision for c in a.changes] == [c.revision for c in b.changes]

        # Writes through B show on A; maintenance and health live in etcd too.
        await b.register("web", "web-2", address="10.0.0.6")
        await poll(lambda: a.server.registry.get("web", "web-2") is not None, within=1)
        status, _ = await a.put(
            "/v1/services/web/instances/web-1/maintenance", {"enable": True, "reason": "deploy"}
        )
        assert status == 200
        await poll(lambda: b.addresses("web.service.local"), within=1)
        assert await b.addresses("web.service.local") == {"10.0.0.6"}
        assert kinds(b, "web-1") == [ChangeKind.REGISTERED, ChangeKind.MAINTENANCE]

        # Deregistration through B: DEREGISTERED on both nodes, not EXPIRED.
        status, _ = await b.delete("web", "web-2")
        assert status == 200
        await poll(lambda: "web-2" not in a.server.registry.instances("web"), within=1)
        assert kinds(a, "web-2")[-1] is ChangeKind.DEREGISTERED
        assert kinds(b, "web-2")[-1] is ChangeKind.DEREGISTERED
        assert (await a.delete("web", "web-2"))[0] == 404
        assert a.revision == b.revision
        # Subscribers see every change in revision order, on both nodes.
        for node in (a, b):
            revisions = [c.revision for c in node.changes]
            assert revisions == sorted(revisions)


async def test_leases_are_etcd_leases_renewed_through_any_node_and_expire_on_both(
    etcd: EtcdCluster,
    tmp_path: Path,
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, url) as (a, b):
        await a.register("web", "kept", ttl="2s")
        await a.register("web", "dies", ttl="2s")
        # Heartbeats through B keep A's registration alive past its TTL.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            status, body = await b.put("/v1/services/web/instances/kept/heartbeat")
            assert status == 200, body
            await asyncio.sleep(0.5)
        assert "kept" in b.server.registry.instances("web")
        # The other one was never renewed: etcd deleted it, both nodes call it an expiry.
        assert "dies" not in a.server.registry.instances("web")
        assert kinds(a, "dies")[-1] is ChangeKind.EXPIRED
        assert kinds(b, "dies")[-1] is ChangeKind.EXPIRED
        # With no node renewing it, the lease still ends on time (etcd's minimum TTL
        # is 2s; expiry within about 1s of the deadline).
        stopped = time.monotonic()
        await poll(lambda: "kept" not in a.server.registry.instances("web"), within=4)
        assert time.monotonic() - stopped < 2 + 1.0
        assert (await b.put("/v1/services/web/instances/kept/heartbeat"))[0] == 404
        assert a.revision == b.revision


async def test_leases_outlive_every_dnsreg_node(etcd: EtcdCluster, tmp_path: Path) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url) as (a,):
        await a.register("web", "w", ttl="2s")
        registered = time.monotonic()
    key = base64.b64encode(b"/dnsreg/instances/web/w").decode()

    async def gone() -> bool:
        return "kvs" not in await etcd.call("/v3/kv/range", {"key": key})

    # No dnsreg node runs now: etcd itself ends the lease, on time.
    assert not await gone()
    await poll(gone, within=5, interval=0.05)
    assert time.monotonic() - registered < 2 + 1.0
    async with nodes(tmp_path / "later", url) as (c,):
        assert c.server.registry.get("web", "w") is None


async def test_validation_conflicts_hold_across_nodes(
    etcd: EtcdCluster,
    tmp_path: Path,
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, url) as (a, b):
        await a.register("web", "canary", ttl="30s")
        await poll(lambda: b.server.registry.get("web", "canary") is not None, within=1)
        status, body = await b.put(
            "/v1/services/web/instances/w2", {"address": "10.0.0.7", "port": 80, "tags": ["canary"]}
        )
        assert status == 409, body


async def test_blocking_queries_and_event_streams_follow_changes_made_on_other_nodes(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, url) as (a, b):
        await a.register("web", "w0")
        await poll(lambda: b.revision == a.revision, within=1)
        index = b.revision

        async def blocked() -> tuple[int, float]:
            async with b.http.get(f"{b.base}/v1/services/web?index={index}&wait=10s") as resp:
                await resp.read()
                return int(resp.headers["X-Dnsreg-Index"]), time.monotonic()

        async def first_event() -> tuple[str, int]:
            async with b.http.get(f"{b.base}/v1/events?since={index}") as resp:
                fields: dict[str, str] = {}
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if not line:
                        if "data" in fields:
                            return fields["event"], int(fields["id"])
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value.strip()
            raise AssertionError("stream ended")

        query = asyncio.create_task(blocked())
        events = asyncio.create_task(first_event())
        await asyncio.sleep(0.2)  # both are parked on B now
        assert not query.done()
        reply = await a.register("web", "w1")
        acked = time.monotonic()
        woke_index, woke_at = await asyncio.wait_for(query, 5)
        assert woke_index == reply["revision"]
        assert woke_at - acked < 0.5
        assert await asyncio.wait_for(events, 5) == ("registered", reply["revision"])


# ---------------------------------------------------------------- etcd failures
async def test_leader_killed_during_a_burst_loses_no_acknowledged_registration(
    etcd3: EtcdCluster,
    tmp_path: Path,
) -> None:
    url = etcd3.store_url()
    async with nodes(tmp_path, url, url) as (a, b):
        await a.register("anchor", "a1", address="10.9.9.9", ttl="60s")
        await poll(lambda: b.server.registry.get("anchor", "a1") is not None, within=1)
        acked: list[str] = []
        failed: list[str] = []
        dns_failures: list[str] = []
        dns_answers = 0
        stop = asyncio.Event()
        killed_at: list[float] = []
        first_ok_after_kill: list[float] = []

        async def dns_loop(node: Node) -> None:
            nonlocal dns_answers
            while not stop.is_set():
                try:
                    msg = await node.query("anchor.service.local", within=1.0)
                    if {r.to_text() for rs in msg.answer for r in rs} != {"10.9.9.9"}:
                        dns_failures.append(f"wrong answer {msg}")
                    dns_answers += 1
                except dns.exception.Timeout:
                    dns_failures.append("timeout")
                await asyncio.sleep(0.01)

        async def writer(node: Node, worker: int) -> None:
            for n in range(15):
                id = f"w{worker}-{n}"
                sent_after_kill = bool(killed_at)
                status, body = await node.put(
                    f"/v1/services/burst/instances/{id}",
                    {"address": f"10.1.{worker}.{n + 1}", "port": 80, "ttl": "60s"},
                )
                if status in (200, 201):
                    acked.append(id)
                    if sent_after_kill and not first_ok_after_kill:
                        first_ok_after_kill.append(time.monotonic())
                else:
                    assert status == 503, body
                    assert "etcd" in body["error"]
                    failed.append(id)
                await asyncio.sleep(0.02)

        async def killer() -> None:
            await poll(lambda: len(acked) >= 20, within=10)
            leader = await etcd3.leader()
            killed_at.append(time.monotonic())
            await etcd3.kill(leader)

        probes = [asyncio.create_task(dns_loop(n)) for n in (a, b)]
        await asyncio.gather(*(writer(n, w) for w, n in enumerate((a, b, a, b))), killer())
        stop.set()
        await asyncio.gather(*probes)

        assert dns_failures == []
        assert dns_answers > 50
        assert len(acked) + len(failed) == 60
        assert first_ok_after_kill, "no write succeeded after the leader was killed"
        failover = first_ok_after_kill[0] - killed_at[0]
        print(f"\nleader killed -> first write sent after it acknowledged: {failover:.2f}s; "
              f"{len(failed)} of 60 writes refused with 503 meanwhile")  # fmt: skip
        assert failover < 6.0
        # Every acknowledged registration is in etcd, so on both nodes and in their DNS.
        for node in (a, b):
            await poll(
                lambda node=node: set(acked) <= set(node.server.registry.instances("burst")),  # type: ignore[misc]
                within=5,
            )
            msg = await node.query("burst.service.local", within=2)
            if not msg.flags & dns.flags.TC:
                assert len({r.to_text() for rs in msg.answer for r in rs}) >= len(acked)
        assert a.revision == b.revision


async def test_etcd_down_then_back_marks_answers_stale_refuses_writes_and_recovers(
    etcd: EtcdCluster,
    tmp_path: Path,
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, stale_after=0.5) as (a,):
        await a.register("web", "w1", ttl="60s")
        msg = await a.query("web.service.local")
        assert ede_codes(msg) == []
        (member,) = etcd.members
        await etcd.stop(member)

        # Writes fail fast, with a 503 that says why.
        t0 = time.monotonic()
        status, body = await a.put(
            "/v1/services/web/instances/w2", {"address": "10.0.0.9", "port": 80}
        )
        assert status == 503, body
        assert "etcd is unreachable" in body["error"]
        assert time.monotonic() - t0 < 1.0

        # DNS goes on answering from the mirror, and after stale_after says it is stale.
        await poll(lambda: a.store.stale, within=3)
        assert a.store.describe()["seconds_since_contact"] >= 0.5  # not before stale_after
        msg = await a.query("web.service.local")
        assert {r.to_text() for rs in msg.answer for r in rs} == {"10.0.0.5"}
        assert EDE_STALE in ede_codes(msg)
        store_status = (await a.status())["store"]
        assert store_status["stale"] is True
        assert store_status["connected"] is False
        t0 = time.monotonic()
        status, body = await a.put("/v1/services/web/instances/w1/heartbeat")
        assert status == 503
        assert "etcd is unreachable" in body["error"]
        assert time.monotonic() - t0 < 0.2  # refused without trying

        restarted = time.monotonic()
        await etcd.restart(member)
        healthy = time.monotonic()
        await poll(lambda: not a.store.stale, within=5)
        print(f"\netcd started again -> stale marking off: {time.monotonic() - restarted:.2f}s "
              f"({time.monotonic() - healthy:.2f}s after etcd answered /health)")  # fmt: skip
        msg = await a.query("web.service.local")
        assert ede_codes(msg) == []
        await a.register("web", "w2", address="10.0.0.9")
        assert await a.addresses("web.service.local") == {"10.0.0.5", "10.0.0.9"}
        assert (await a.status())["store"]["connected"] is True


async def test_a_node_cut_off_past_compaction_lists_again_and_converges(
    etcd: EtcdCluster,
    tmp_path: Path,
) -> None:
    (member,) = etcd.members
    proxy = Proxy(member.client_port)
    await proxy.start()
    try:
        async with nodes(
            tmp_path, f"etcd://{proxy.endpoint}/dnsreg", etcd.store_url(), stale_after=0.3
        ) as (a, b):
            await b.register("web", "old", ttl="60s")
            await b.register("web", "changes", ttl="60s", port=1)
            await poll(lambda: a.server.registry.get("web", "changes") is not None, within=1)
            await proxy.cut()
            await poll(lambda: a.store.stale, within=3)
            # Meanwhile, through B: a deregistration, a replacement, a registration...
            assert (await b.delete("web", "old"))[0] == 200
            await b.register("web", "changes", ttl="60s", port=2)
            await b.register("web", "new", ttl="60s", address="10.0.0.8")
            # ...and the history A would resume from is compacted away.
            await etcd.call("/v3/kv/compaction", {"revision": b.revision, "physical": True})
            a_saw = len(a.changes)
            await proxy.start()
            await poll(lambda: not a.store.stale, within=5)
            await poll(lambda: a.revision == b.revision, within=2)
            assert a.store.describe()["resyncs"] >= 2  # the start, and this one
            registry = a.server.registry
            assert set(registry.instances("web")) == {"changes", "new"}
            changes_instance = registry.get("web", "changes")
            assert changes_instance is not None
            assert changes_instance.reg.port == 2
            assert await a.addresses("web.service.local") == {"10.0.0.5", "10.0.0.8"}
            resync = {(c.id, c.kind) for c in a.changes[a_saw:]}
            assert resync == {
                ("old", ChangeKind.DEREGISTERED),
                ("changes", ChangeKind.REPLACED),
                ("new", ChangeKind.REGISTERED),
            }
            assert {c.revision for c in a.changes[a_saw:]} == {b.revision}
    finally:
        await proxy.close()


# ------------------------------------------------------------------- node death
async def test_health_checks_run_on_one_node_and_move_when_it_dies(
    etcd: EtcdCluster, tmp_path: Path, spawn: Any
) -> None:
    """Each instance is checked by exactly one live node; a killed node's share moves."""
    hits: Counter[str] = Counter()
    failing = False

    async def health(request: web.Request) -> web.Response:
        hits[request.match_info["id"]] += 1
        return web.Response(status=500 if failing else 200)

    app = web.Application()
    app.router.add_get("/h/{id}", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = etcd.store_url()
    try:
        async with nodes(tmp_path, url) as (a,):
            other = spawn("--store", url, workdir=tmp_path)
            await poll(lambda: len(a.store.nodes) == 2, within=5)
            ids = [f"i{n}" for n in range(16)]
            for id in ids:
                check = {"http": f"http://127.0.0.1:{port}/h/{id}", "interval": "1s",
                         "timeout": "500ms", "fall": 1}  # fmt: skip
                # The target is on 127.0.0.1, so is the instance (SPEC §7: checks hit
                # their own instance).
                await a.register("web", id, address="127.0.0.1", ttl="60s", checks=[check])
            await poll(lambda: all(hits[id] for id in ids), within=5)
            theirs = [id for id in ids if not a.store.owns_check("web", id)]
            assert theirs, "rendezvous gave every instance to one node"
            # Exactly one node checks each instance: one probe per interval, not two.
            hits.clear()
            await asyncio.sleep(3.0)
            assert all(1 <= hits[id] <= 4 for id in ids), hits

            other.proc.kill()
            other.proc.wait(10)
            killed = time.monotonic()
            failing = True
            # Only A is left to see the targets fail: every instance leaves A's DNS,
            # the dead node's share included, once its node lease has run out.
            await poll(lambda: a.addresses("web.service.local"), within=1)
            took = await poll(
                lambda: all(not a.server.registry.get("web", i).served for i in ids),  # type: ignore[union-attr]
                within=10,
                interval=0.05,
            )
            print(f"\ndnsreg node killed -> its checks ran on the survivor and withdrew "
                  f"its instances: {took:.2f}s (node TTL 3s + check interval 1s)")  # fmt: skip
            assert a.store.owns_check("web", theirs[0])
            assert a.store.nodes.keys() == {a.store.node_id}
            assert time.monotonic() - killed < 3 + 1 + 1 + 1.5
            assert await a.addresses("web.service.local") == set()
    finally:
        await runner.cleanup()


async def test_backup_of_an_etcd_store_says_to_use_etcdctl(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async with nodes(tmp_path, etcd.store_url()) as (a,):
        async with a.http.get(a.base + "/v1/backup") as resp:
            assert resp.status == 503
            assert "etcdctl snapshot save" in (await resp.json())["error"]
        assert list((tmp_path / "node0" / "data").glob(".backup-*")) == []
