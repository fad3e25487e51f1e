"""Zone transfers and NOTIFY with real secondaries and clients: NSD, kdig, dig (issue 12).

dnsreg runs in-process on 127.0.0.1 port 0; NSD runs as a real secondary in a
temporary directory on a free loopback port, fed by AXFR/IXFR and NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from dnsreg.config import HostPort
from dnsreg.core.model import Registration
from tests.helpers import Running, async_wait_until, make_config, start_server

NSD = shutil.which("nsd")
KDIG = shutil.which("kdig")
DIG = shutil.which("dig")
ZONE = "service.local."


def free_port() -> int:
    """A loopback port free for both UDP and TCP (NSD listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return out.decode()


async def answers(port: int, name: str, rdtype: str = "A") -> tuple[int, list[str]]:
    q = dns.message.make_query(name, rdtype)
    msg = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)
    wanted = dns.rdatatype.from_text(rdtype)
    got = sorted(r.to_text() for rrset in msg.answer if rrset.rdtype == wanted for r in rrset)
    return msg.rcode(), got


async def serial(port: int) -> int:
    q = dns.message.make_query(ZONE, "SOA")
    msg = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)
    return int(msg.answer[0][0].serial)


@contextlib.asynccontextmanager
async def dnsreg(tmp_path: Path, **config: object) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path, **config))
    try:
        async with aiohttp.ClientSession() as http:
            yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def nsd_secondary(tmp_path: Path, port: int, primary: int) -> AsyncIterator[int]:
    """NSD following dnsreg: request-xfr from it, NOTIFY accepted from it."""
    assert NSD is not None
    home = tmp_path / "nsd"
    home.mkdir()
    (home / "nsd.conf").write_text(f"""
server:
    ip-address: 127.0.0.1
    port: {port}
    username: ""
    chroot: ""
    zonesdir: "{home}"
    database: ""
    pidfile: "{home}/nsd.pid"
    xfrdfile: "{home}/xfrd.state"
    zonelistfile: "{home}/zone.list"
    xfrdir: "{home}"
    server-count: 1
    verbosity: 2
remote-control:
    control-enable: no
zone:
    name: service.local
    zonefile: "service.local.zone"
    request-xfr: 127.0.0.1@{primary} NOKEY
    allow-notify: 127.0.0.1 NOKEY
""")
    async with daemon([NSD, "-d", "-c", str(home / "nsd.conf")], home / "nsd.log"):
        yield port


@contextlib.asynccontextmanager
async def daemon(argv: list[str], log_path: Path) -> AsyncIterator[None]:
    """A server process in the foreground for the block, its output in ``log_path``."""
    log = log_path.open("w")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


async def same_within(primary: int, secondary: int, name: str, rdtype: str, within: float) -> None:
    """The secondary answers ``name`` as dnsreg does within ``within`` seconds."""
    expected = await answers(primary, name, rdtype)

    async def agree() -> bool:
        try:
            return await answers(secondary, name, rdtype) == expected
        except dns.exception.Timeout:
            return False

    await async_wait_until(agree, within=within, interval=0.05)


@pytest.mark.skipif(NSD is None, reason="nsd is not on PATH (apt-get install nsd)")
async def test_nsd_secondary_follows_register_deregister_and_health(tmp_path: Path) -> None:
    port = free_port()
    listener = socket.socket()  # what the health check connects to, until we close it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    check_port = listener.getsockname()[1]
    notify = (HostPort("127.0.0.1", port),)
    async with (
        dnsreg(tmp_path, allow_transfer=("127.0.0.1/32",), notify=notify) as r,
        nsd_secondary(tmp_path, port, r.dns_port) as nsd,
    ):
        await r.register("web", "web-1", address="10.0.0.5", port=8080)
        # The first copy: NSD asks on start, then follows NOTIFYs.
        await async_wait_until(lambda: _serial_matches(r.dns_port, nsd), within=10, interval=0.1)

        started = time.monotonic()
        await r.register("web", "web-2", address="10.0.0.6", port=8081, tags=["canary"])
        await same_within(r.dns_port, nsd, "web.service.local", "A", 2.0)
        assert await answers(nsd, "web.service.local") == (0, ["10.0.0.5", "10.0.0.6"])
        assert time.monotonic() - started < 2.0
        await same_within(r.dns_port, nsd, "_web._tcp.service.local", "PTR", 2.0)
        assert (await answers(nsd, "_canary._sub._web._tcp.service.local", "PTR"))[1] == [
            "web-2._web._tcp.service.local."
        ]

        # Deregistration.
        async with r.http.delete(f"{r.base}/v1/services/web/instances/web-1") as resp:
            assert resp.status == 200
        await same_within(r.dns_port, nsd, "web.service.local", "A", 2.0)
        assert (await answers(nsd, "web.service.local"))[1] == ["10.0.0.6"]
        assert (await answers(nsd, "web-1.web.service.local"))[0] == dns.rcode.NXDOMAIN

        # Health withdrawal: the check's port stops answering.
        check = {"tcp": f"127.0.0.1:{check_port}", "interval": "1s", "timeout": "0.5s", "fall": 1}
        await r.register("db", "db-0", address="127.0.0.2", port=5432)
        await r.register("db", "db-1", address="127.0.0.1", port=check_port, checks=[check])
        await async_wait_until(lambda: _served(r, "db", "db-1"), within=5)
        await same_within(r.dns_port, nsd, "db.service.local", "A", 2.0)
        assert await answers(nsd, "db.service.local") == (0, ["127.0.0.1", "127.0.0.2"])
        listener.close()
        await async_wait_until(lambda: not _served(r, "db", "db-1"), within=6)
        withdrawn = time.monotonic()
        await same_within(r.dns_port, nsd, "db.service.local", "A", 2.0)
        assert time.monotonic() - withdrawn < 2.0
        assert await answers(nsd, "db.service.local") == (0, ["127.0.0.2"])
        assert (await answers(nsd, "_db._tcp.service.local", "PTR"))[1] == [
            "db-0._db._tcp.service.local."
        ]
        assert await serial(nsd) == await serial(r.dns_port)
        # The secondary got increments, not just whole zones (NSD logs what it applied).
        notifier = r.server.notifier
        assert notifier is not None
        assert sum(notifier.acknowledged.values()) >= 3
        transfers = r.server.responder.transfers  # type: ignore[union-attr]
        assert transfers is not None
        assert transfers.served["ixfr"] >= 1


def _served(r: Running, service: str, instance: str) -> bool:
    found = r.server.registry.get(service, instance)
    return found is not None and found.served


async def _serial_matches(primary: int, secondary: int) -> bool:
    try:
        return await serial(secondary) == await serial(primary)
    except (dns.exception.Timeout, IndexError, AttributeError):
        return False


@pytest.mark.skipif(KDIG is None, reason="kdig is not on PATH (apt-get install knot-dnsutils)")
async def test_kdig_ixfr_is_incremental_and_axfr_streams_many_messages(tmp_path: Path) -> None:
    assert KDIG is not None
    async with dnsreg(tmp_path, allow_transfer=("127.0.0.0/8",)) as r:
        await r.register("web", "web-1", address="10.0.0.5", port=8080)
        old = await serial(r.dns_port)
        await r.register("web", "web-2", address="10.0.0.6", port=8081)
        async with r.http.delete(f"{r.base}/v1/services/web/instances/web-1") as resp:
            assert resp.status == 200
        now = await serial(r.dns_port)
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), f"IXFR={old}", ZONE)
        soas = [line.split()[6] for line in out.splitlines() if "\tSOA\t" in line]
        # RFC 1995 §4: current SOA, then per step old SOA, deletions, new SOA, additions.
        assert soas == [str(now), str(old), str(old + 1), str(old + 1), str(now), str(now)], out
        assert "10.0.0.6" in out  # web-2 added
        assert "\tA\t127.0.0.1" not in out, out  # ns.Z did not change: not a full zone
        # Up to date: the SOA alone.
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), f"IXFR={now}", ZONE)
        assert out.count("\tSOA\t") == 1, out

        # A large zone streams in several messages (RFC 5936 §2.2).
        store = r.server.store
        assert store is not None
        for n in range(120):
            await store.register(
                Registration(
                    "big", f"i-{n}", ipaddress.ip_address(f"10.1.{n // 250}.{n % 250}"), 80
                )
            )
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), "AXFR", ZONE)
        assert "messages" in out
        received = next(line for line in out.splitlines() if line.startswith(";; Received"))
        messages = int(received.split("(")[1].split()[0])
        assert messages > 1, received
        assert out.count("\tA\t10.1.") == 240  # big.Z and each i-N.big.Z
        assert out.count("\tSOA\t") == 2


@pytest.mark.skipif(KDIG is None, reason="kdig is not on PATH (apt-get install knot-dnsutils)")
async def test_journal_overflow_falls_back_to_a_full_zone(tmp_path: Path) -> None:
    assert KDIG is not None
    async with dnsreg(tmp_path, allow_transfer=("127.0.0.1/32",), ixfr_journal=2) as r:
        await r.register("web", "web-1")
        old = await serial(r.dns_port)
        for n in range(2, 6):
            await r.register("web", f"web-{n}")
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), f"IXFR={old}", ZONE)
        assert out.count("\tSOA\t") == 2, out  # AXFR form: SOA, the zone, SOA
        assert "\tA\t127.0.0.1" in out  # ns.Z: the whole zone
        for n in range(1, 6):
            assert f"web-{n}.web.service.local." in out
        transfers = r.server.responder.transfers  # type: ignore[union-attr]
        assert transfers is not None
        assert transfers.served["ixfr-as-axfr"] == 1


@pytest.mark.skipif(DIG is None or KDIG is None, reason="needs dig and kdig")
async def test_transfers_refused_outside_allow_transfer_and_ixfr_over_udp(tmp_path: Path) -> None:
    assert DIG is not None
    assert KDIG is not None
    async with dnsreg(tmp_path, allow_transfer=("192.0.2.0/24",)) as r:
        await r.register("web", "web-1")
        port = str(r.dns_port)
        out = await run(KDIG, "@127.0.0.1", "-p", port, "AXFR", ZONE)
        assert "REFUSED" in out, out
        assert "web-1" not in out
        out = await run(KDIG, "@127.0.0.1", "-p", port, "IXFR=1", ZONE)
        assert "REFUSED" in out, out
        out = await run(DIG, "@127.0.0.1", "-p", port, "AXFR", ZONE)
        assert "Transfer failed" in out, out
        # RFC 1995 §2: IXFR over UDP gets the current SOA, whoever asks.
        out = await run(DIG, "@127.0.0.1", "-p", port, "+notcp", "IXFR=1", ZONE)
        lines = [line for line in out.splitlines() if line and not line.startswith(";")]
        assert len(lines) == 1, out
        assert lines[0].split()[3] == "SOA"
        assert lines[0].split()[6] == str(await serial(r.dns_port))
    # Without any transfer configuration, AXFR stays refused over TCP.
    (tmp_path / "plain").mkdir()
    async with dnsreg(tmp_path / "plain") as r:
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), "AXFR", ZONE)
        assert "REFUSED" in out, out


@pytest.mark.skipif(KDIG is None, reason="kdig is not on PATH (apt-get install knot-dnsutils)")
async def test_a_service_larger_than_a_reply_transfers_whole(tmp_path: Path) -> None:
    """5 000 instances: a query gets a reply-sized draw, a transfer every record, and an
    IXFR after one change carries that change alone. The transfer is asked while the
    journal is still catching up (a slice per loop turn): it waits for it."""
    assert KDIG is not None
    count = 5_000
    async with dnsreg(tmp_path, allow_transfer=("127.0.0.1/32",)) as r:
        for n in range(count):
            reg = Registration(
                "big", f"i{n}", ipaddress.ip_address(f"10.2.{n >> 8}.{n & 255}"), 80, ttl=0
            )
            r.server.registry.register(reg, now=0.0)
        keeper = r.server.journal_keeper
        assert keeper is not None
        keeper.changed()  # as the store tells it of each write
        assert keeper.busy
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), "AXFR", ZONE)
        owner = f"big.{ZONE}"
        rows = [row for row in (line.split() for line in out.splitlines()) if row[:1] == [owner]]
        assert sum(1 for row in rows if row[3] == "A") == count
        assert sum(1 for row in rows if row[3] == "SRV") == count
        old = await serial(r.dns_port)
        await r.register("big", "i3", address="10.9.9.9", port=80)
        out = await run(KDIG, "@127.0.0.1", "-p", str(r.dns_port), f"IXFR={old}", ZONE)
        changed = [line.split() for line in out.splitlines() if "\tA\t" in line]
        assert sorted(row[-1] for row in changed) == [
            "10.2.0.3",
            "10.2.0.3",
            "10.9.9.9",
            "10.9.9.9",
        ]
