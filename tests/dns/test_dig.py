"""The real-world client: ``dig`` from bind9-dnsutils against the running server."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.helpers import Running

DIG = shutil.which("dig")

pytestmark = [
    pytest.mark.dig,
    pytest.mark.skipif(DIG is None, reason="dig is not on PATH (apt-get install bind9-dnsutils)"),
]


async def dig(running: Running, *args: str) -> str:
    """Run dig without blocking the loop the in-process server answers on."""
    assert DIG is not None
    proc = await asyncio.create_subprocess_exec(
        DIG, "@127.0.0.1", "-p", str(running.dns_port), "+time=2", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return out.decode()


@pytest.fixture
async def web(running: Running) -> Running:
    await running.register(
        "web", "web-1", address="10.0.0.5", port=8080, tags=["primary"], meta={"version": "2"}
    )
    return running


async def test_dig_short_a_srv_txt(web: Running) -> None:
    assert (await dig(web, "+short", "web.service.local", "A")).split() == ["10.0.0.5"]
    assert (await dig(web, "+short", "web.service.local", "SRV")).splitlines() == [
        "0 1 8080 web-1.web.service.local."
    ]
    assert (await dig(web, "+short", "_web._tcp.service.local", "SRV")).splitlines() == [
        "0 1 8080 web-1.web.service.local."
    ]
    assert (await dig(web, "+short", "web-1.web.service.local", "TXT")).splitlines() == [
        '"version=2"'
    ]
    assert (await dig(web, "+short", "primary.web.service.local")).split() == ["10.0.0.5"]


async def test_dig_default_query_with_edns_cookie(web: Running) -> None:
    # dig's defaults: RD set, EDNS0 with a COOKIE option, AD set.
    out = await dig(web, "web.service.local", "SRV")
    assert "status: NOERROR" in out, out
    assert "flags: qr aa rd;" in out, out  # no ra, no ad copied
    assert "EDNS: version: 0" in out, out
    assert "web-1.web.service.local." in out
    assert "ADDITIONAL SECTION" in out
    assert "10.0.0.5" in out
    assert "FORMERR" not in out
    assert "mismatch" not in out.lower()


async def test_dig_over_tcp(web: Running) -> None:
    out = await dig(web, "+tcp", "web.service.local", "A")
    assert "status: NOERROR" in out, out
    assert "(TCP)" in out, out
    assert "10.0.0.5" in out
    out = await dig(web, "+tcp", "+short", "web.service.local", "SRV")
    assert out.splitlines() == ["0 1 8080 web-1.web.service.local."]


async def test_dig_negative_answers_and_case(web: Running) -> None:
    out = await dig(web, "nope.service.local", "A")
    assert "status: NXDOMAIN" in out, out
    assert "AUTHORITY SECTION" in out
    assert "SOA" in out
    out = await dig(web, "WeB.SeRvIcE.LoCaL", "A")
    assert "status: NOERROR" in out, out
    assert "WeB.SeRvIcE.LoCaL." in out  # answer owners point at the client's question
    assert "10.0.0.5" in out
    out = await dig(web, "example.org", "A")
    assert "status: REFUSED" in out, out


async def test_dig_any_and_axfr(web: Running) -> None:
    out = await dig(web, "+notcp", "web-1.web.service.local", "ANY")
    assert "status: NOERROR" in out, out
    answers = [
        line for line in out.split("ANSWER SECTION:")[1].splitlines() if line.startswith("web-1")
    ]
    assert len({line.split()[3] for line in answers}) == 1, "one RRset over UDP (RFC 8482)"
    out = await dig(web, "service.local", "AXFR")
    assert "Transfer failed" in out, out
