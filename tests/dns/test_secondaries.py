"""BIND 9 and Knot DNS as real secondaries of dnsreg, transfers and NOTIFY signed with TSIG.

NSD (unsigned, by address) is in ``test_transfer_live``. Here each of the two
other C servers operators run follows the dynamic zone with the key setup the
docs show: the secondary asks for the zone with ``xfr-key`` (RFC 8945), dnsreg
signs its NOTIFYs with the same key (``notify_key``), and the secondary must
answer the same as dnsreg within 2 s of a registration and a deregistration.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.rcode
import pytest

from dnsreg.config import HostPort
from dnsreg.dns.tsig import TsigKey
from tests.dns.test_transfer_live import (
    _serial_matches,
    answers,
    daemon,
    dnsreg,
    free_port,
    same_within,
    serial,
)
from tests.helpers import async_wait_until

NAMED = shutil.which("named")
KNOTD = shutil.which("knotd")
SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
KEYS = (TsigKey("xfr-key.", "hmac-sha256", SECRET, ("*",), frozenset({"transfer"})),)


def named_conf(home: Path, port: int, primary: int) -> str:
    """The docs' BIND secondary, made runnable by an unprivileged test (own dirs, no rndc)."""
    return f"""
key "xfr-key" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
options {{
    directory "{home}";
    pid-file "{home}/named.pid";
    session-keyfile "{home}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "service.local" {{
    type secondary;
    primaries {{ 127.0.0.1 port {primary} key "xfr-key"; }};
    file "service.local.db";
    allow-notify {{ 127.0.0.1; }};
}};
"""


def knot_conf(home: Path, port: int, primary: int) -> str:
    """A Knot DNS 3 secondary: transfers and NOTIFY both keyed."""
    return f"""
server:
    rundir: "{home}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{home}/db"
key:
  - id: xfr-key
    algorithm: hmac-sha256
    secret: {SECRET}
remote:
  - id: dnsreg
    address: 127.0.0.1@{primary}
    key: xfr-key
acl:
  - id: notify-from-dnsreg
    address: 127.0.0.1
    key: xfr-key
    action: notify
zone:
  - domain: service.local
    storage: "{home}"
    file: service.local.zone
    master: dnsreg
    acl: notify-from-dnsreg
    zonefile-sync: -1
"""


@contextlib.asynccontextmanager
async def secondary(argv: list[str], home: Path, port: int) -> AsyncIterator[int]:
    async with daemon(argv, home / "server.log"):
        yield port


async def _follow_changes(tmp_path: Path, kind: str) -> None:
    port = free_port()
    home = tmp_path / kind
    home.mkdir()
    notify = (HostPort("127.0.0.1", port),)
    async with dnsreg(tmp_path, tsig_keys=KEYS, notify=notify, notify_key="xfr-key.") as r:
        await r.register("web", "web-1", address="10.0.0.5", port=8080)
        if kind == "bind":
            assert NAMED is not None
            (home / "named.conf").write_text(named_conf(home, port, r.dns_port))
            argv = [NAMED, "-g", "-c", str(home / "named.conf")]
        else:
            assert KNOTD is not None
            (home / "db").mkdir()
            (home / "knot.conf").write_text(knot_conf(home, port, r.dns_port))
            argv = [KNOTD, "-c", str(home / "knot.conf")]
        async with secondary(argv, home, port) as sec:
            # The first copy: asked for on start (signed AXFR or IXFR), then NOTIFYs.
            await async_wait_until(
                lambda: _serial_matches(r.dns_port, sec), within=15, interval=0.1
            )
            assert await answers(sec, "web.service.local") == (0, ["10.0.0.5"])

            started = time.monotonic()
            await r.register("web", "web-2", address="10.0.0.6", port=8081, tags=["canary"])
            await same_within(r.dns_port, sec, "web.service.local", "A", 2.0)
            assert time.monotonic() - started < 2.0
            assert await answers(sec, "web.service.local") == (0, ["10.0.0.5", "10.0.0.6"])
            assert (await answers(sec, "_canary._sub._web._tcp.service.local", "PTR"))[1] == [
                "web-2._web._tcp.service.local."
            ]

            started = time.monotonic()
            async with r.http.delete(f"{r.base}/v1/services/web/instances/web-1") as resp:
                assert resp.status == 200
            await same_within(r.dns_port, sec, "web.service.local", "A", 2.0)
            assert time.monotonic() - started < 2.0
            assert (await answers(sec, "web-1.web.service.local"))[0] == dns.rcode.NXDOMAIN
            assert await serial(sec) == await serial(r.dns_port)

            transfers = r.server.responder.transfers  # type: ignore[union-attr]
            assert transfers is not None
            # Every transfer was keyed (nothing is in allow_transfer), and the
            # secondary took the changes as increments it could apply.
            assert transfers.served["ixfr"] >= 2, transfers.served
            log = (home / "server.log").read_text()
            assert "fallback to AXFR" not in log, log  # Knot: an IXFR it could not apply
            notifier = r.server.notifier
            assert notifier is not None
            assert sum(notifier.acknowledged.values()) >= 2, (home / "server.log").read_text()


@pytest.mark.skipif(NAMED is None, reason="named is not on PATH (apt-get install bind9)")
async def test_bind_secondary_follows_with_tsig(tmp_path: Path) -> None:
    await _follow_changes(tmp_path, "bind")


@pytest.mark.skipif(KNOTD is None, reason="knotd is not on PATH (apt-get install knot)")
async def test_knot_secondary_follows_with_tsig(tmp_path: Path) -> None:
    await _follow_changes(tmp_path, "knot")


@pytest.mark.skipif(NAMED is None, reason="named is not on PATH (apt-get install bind9)")
async def test_a_wrong_key_gets_no_zone(tmp_path: Path) -> None:
    """BIND with another secret for ``xfr-key``: dnsreg answers NOTAUTH and BIND has no zone."""
    assert NAMED is not None
    port = free_port()
    home = tmp_path / "bind"
    home.mkdir()
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        await r.register("web", "web-1", address="10.0.0.5", port=8080)
        wrong = named_conf(home, port, r.dns_port).replace(SECRET, "A" * 43 + "=")
        (home / "named.conf").write_text(wrong)
        async with secondary([NAMED, "-g", "-c", str(home / "named.conf")], home, port) as sec:

            def refused_logged() -> bool:
                # BIND's words when the primary's answer carries a TSIG error (RFC 8945 §5.2).
                return "tsig indicates error" in (home / "server.log").read_text()

            await async_wait_until(refused_logged, within=15, interval=0.1)
            rcode, _ = await answers(sec, "web.service.local")
            assert rcode == dns.rcode.SERVFAIL  # a secondary without its zone
