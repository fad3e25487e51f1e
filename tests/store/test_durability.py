"""SPEC §3 persistence and §6 signals, with the real ``dnsreg serve`` process."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode

from tests.helpers import Process

TTL = 60.0


async def dns_a(port: int, name: str) -> list[str] | None:
    q = dns.message.make_query(name, "A")
    msg = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3)
    if msg.rcode() == dns.rcode.NXDOMAIN:
        return None
    return sorted(r.to_text() for rr in msg.answer for r in rr)


async def all_instances(http: aiohttp.ClientSession, proc: Process) -> dict[tuple[str, str], Any]:
    async with http.get(f"{proc.base}/v1/services") as resp:
        services = (await resp.json())["services"]
    out: dict[tuple[str, str], Any] = {}
    for service in services:
        async with http.get(f"{proc.base}/v1/services/{service}") as resp:
            for instance in (await resp.json())["instances"]:
                out[(instance["service"], instance["id"])] = instance
    return out


def address(n: int) -> str:
    return f"10.2.{n // 250}.{n % 250 + 1}"


async def test_every_acknowledged_write_survives_sigkill(spawn: Any, tmp_path: Path) -> None:
    first: Process = spawn()
    acked: dict[tuple[str, str], dict[str, Any]] = {}
    deleted: set[tuple[str, str]] = set()
    revisions: list[int] = []

    async with aiohttp.ClientSession() as http:

        async def register(n: int, port: int = 8000) -> None:
            key = (f"svc{n % 4}", f"i-{n}")
            body = {
                "address": address(n),
                "port": port + n,
                "tags": [f"t{n % 3}"],
                "meta": {"n": str(n)},
                "ttl": "0" if n % 10 == 0 else f"{TTL:.0f}s",
            }
            url = f"{first.base}/v1/services/{key[0]}/instances/{key[1]}"
            async with http.put(url, json=body) as resp:
                reply = await resp.json()
                assert resp.status in (200, 201), reply
            acked[key] = body
            revisions.append(reply["revision"])

        async def deregister(n: int) -> None:
            key = (f"svc{n % 4}", f"i-{n}")
            async with http.delete(f"{first.base}/v1/services/{key[0]}/instances/{key[1]}") as r:
                assert r.status == 200
            deleted.add(key)
            acked.pop(key, None)

        # A concurrent burst of 200 registrations...
        await asyncio.gather(*(register(n) for n in range(200)))
        # ...then deletes, replacements and maintenance racing each other.
        maintenance_url = f"{first.base}/v1/services/svc1/instances/i-1/maintenance"
        async with http.put(maintenance_url, json={"enable": True, "reason": "disk"}) as resp:
            assert resp.status == 200
        await asyncio.gather(
            *(deregister(n) for n in range(100, 120)),
            *(register(n, port=9000) for n in range(150, 170)),
        )
        # SIGKILL the moment the last 2xx is in: no chance to flush anything more.
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        restart_at = time.time()

        second: Process = spawn(workdir=tmp_path)
        started = time.time()

        found = await all_instances(http, second)
        assert set(found) == set(acked), "exactly the acknowledged state is back"
        for key, body in acked.items():
            instance = found[key]
            assert instance["address"] == body["address"]
            assert instance["port"] == body["port"]
            assert instance["tags"] == body["tags"]
            assert instance["meta"] == body["meta"]
            if body["ttl"] == "0":
                assert instance["lease_deadline"] is None
            else:
                # A fresh, full lease from the restart, not what was left of the old one.
                assert restart_at + TTL <= instance["lease_deadline"] <= started + TTL
        assert found[("svc1", "i-1")]["maintenance"] == {"enabled": True, "reason": "disk"}
        assert not deleted & set(found)

        # The revision never goes back: the SOA serial of a secondary or cache stays sane.
        async with http.get(f"{second.base}/v1/status") as resp:
            status = await resp.json()
        assert status["revision"] >= max(revisions)
        assert status["instances"] == 180

        # And DNS serves it all at once.
        assert await dns_a(second.dns_port, "i-5.svc1.service.local") == [address(5)]
        assert await dns_a(second.dns_port, "i-150.svc2.service.local") == [address(150)]
        assert await dns_a(second.dns_port, "i-101.svc1.service.local") is None
        assert await dns_a(second.dns_port, "i-1.svc1.service.local") == []  # maintenance: NODATA
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=10) == 0


async def test_sigterm_exits_zero_and_keeps_state(spawn: Any, tmp_path: Path) -> None:
    first: Process = spawn()
    async with aiohttp.ClientSession() as http:
        url = f"{first.base}/v1/services/web/instances/web-1"
        async with http.put(url, json={"address": "10.0.0.5", "port": 80}) as resp:
            assert resp.status == 201
        # An idle DNS TCP client must not keep the server from stopping.
        idle = socket.create_connection(("127.0.0.1", first.dns_port))
        try:
            stopping = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(timeout=10) == 0
            assert time.monotonic() - stopping < 5
        finally:
            idle.close()
        assert "shutting down" in first.log_text()

        second: Process = spawn(workdir=tmp_path)
        assert await dns_a(second.dns_port, "web.service.local") == ["10.0.0.5"]
        second.proc.send_signal(signal.SIGINT)
        assert second.proc.wait(timeout=10) == 0
