"""DNS-SD browsing (RFC 6763, SPEC §1) against a running server, with dig and dnspython."""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from tests.dns.test_dig import DIG, dig
from tests.helpers import Running, async_wait_until


def texts(msg: dns.message.Message, section: str, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    out = []
    for rrset in getattr(msg, section):
        if rrset.rdtype == wanted:
            out.extend(f"{rrset.name} {r.to_text()}" for r in rrset)
    return sorted(out)


@pytest.fixture
async def shop(running: Running) -> Running:
    await running.register(
        "web", "web-1", address="10.0.0.5", port=8080, tags=["primary"], meta={"path": "/"}
    )
    await running.register("web", "web-2", address="10.0.0.6", port=8081)
    await running.register("dns", "resolver", address="fd00::53", port=53, proto="udp")
    return running


@pytest.mark.dig
@pytest.mark.skipif(DIG is None, reason="dig is not on PATH (apt-get install bind9-dnsutils)")
async def test_dig_browses_types_instances_and_subtypes(shop: Running) -> None:
    out = await dig(shop, "+short", "_services._dns-sd._udp.service.local", "PTR")
    assert sorted(out.split()) == ["_dns._udp.service.local.", "_web._tcp.service.local."]
    out = await dig(shop, "+short", "_web._tcp.service.local", "PTR")
    assert sorted(out.split()) == [
        "web-1._web._tcp.service.local.",
        "web-2._web._tcp.service.local.",
    ]
    out = await dig(shop, "+short", "_primary._sub._web._tcp.service.local", "PTR")
    assert out.split() == ["web-1._web._tcp.service.local."]
    out = await dig(shop, "+short", "web-1._web._tcp.service.local", "SRV")
    assert out.split() == ["0", "1", "8080", "web-1.web.service.local."]
    # TXT is always there: meta as key=value, else one empty string (RFC 6763 §6.1).
    assert (await dig(shop, "+short", "web-1._web._tcp.service.local", "TXT")).split() == [
        '"path=/"'
    ]
    assert (await dig(shop, "+short", "web-2._web._tcp.service.local", "TXT")).split() == ['""']
    for name in ("b._dns-sd._udp.service.local", "lb._dns-sd._udp.service.local"):
        assert (await dig(shop, "+short", name, "PTR")).split() == ["service.local."]
    # The SRV set at _web._tcp (RFC 2782) is still there beside the PTRs.
    out = await dig(shop, "+short", "_web._tcp.service.local", "SRV")
    assert len(out.splitlines()) == 2


async def test_browse_reply_carries_srv_txt_and_addresses(shop: Running) -> None:
    msg = await shop.query("_web._tcp.service.local", "PTR", use_edns=0)
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA
    # RFC 6763 §12.1: the instances' SRV and TXT, and their targets' addresses.
    assert texts(msg, "additional", "SRV") == [
        "web-1._web._tcp.service.local. 0 1 8080 web-1.web.service.local.",
        "web-2._web._tcp.service.local. 0 1 8081 web-2.web.service.local.",
    ]
    assert texts(msg, "additional", "TXT") == [
        'web-1._web._tcp.service.local. "path=/"',
        'web-2._web._tcp.service.local. ""',
    ]
    assert texts(msg, "additional", "A") == [
        "web-1.web.service.local. 10.0.0.5",
        "web-2.web.service.local. 10.0.0.6",
    ]
    # RFC 6763 §12.2: an instance's SRV reply brings its target's address.
    msg = await shop.query("resolver._dns._udp.service.local", "SRV")
    assert texts(msg, "additional", "AAAA") == ["resolver.dns.service.local. fd00::53"]


async def test_unknown_dnssd_names_are_nxdomain_and_nodes_nodata(shop: Running) -> None:
    for name in (
        "_nope._tcp.service.local",
        "web-1._web._udp.service.local",  # web-1 speaks tcp
        "web-9._web._tcp.service.local",
        "_missing._sub._web._tcp.service.local",
    ):
        msg = await shop.query(name, "PTR")
        assert msg.rcode() == dns.rcode.NXDOMAIN, name
    for name, rdtype in (
        ("_dns-sd._udp.service.local", "PTR"),
        ("_sub._web._tcp.service.local", "PTR"),
        ("web-1._web._tcp.service.local", "A"),
        ("_web._tcp.service.local", "TXT"),
    ):
        msg = await shop.query(name, rdtype)
        assert msg.rcode() == dns.rcode.NOERROR, name
        assert msg.answer == [], name
        assert msg.authority
        assert msg.authority[0].rdtype == dns.rdatatype.SOA


async def test_failing_or_maintained_instance_leaves_the_ptr_set(running: Running) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the TCP check fails
    check = {"tcp": f"127.0.0.1:{port}", "interval": "1s", "timeout": "0.5s", "fall": 1}
    await running.register("api", "good", address="127.0.0.1", port=80)
    await running.register("api", "bad", address="127.0.0.1", port=port, checks=[check])
    await running.register("api", "spare", address="127.0.0.1", port=81)

    async def browse() -> list[str]:
        msg = await running.query("_api._tcp.service.local", "PTR")
        return texts(msg, "answer", "PTR")

    # A pending check is not served (SPEC §4), a failed one neither; answers are cached
    # and must follow both, and a maintenance switch, at once.
    def failed() -> bool:
        bad = running.server.registry.get("api", "bad")
        return bad is not None and bad.health.value == "critical"

    await async_wait_until(failed)
    names = await browse()
    assert names == [
        "_api._tcp.service.local. good._api._tcp.service.local.",
        "_api._tcp.service.local. spare._api._tcp.service.local.",
    ]
    msg = await running.query("bad._api._tcp.service.local", "SRV")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []
    url = f"{running.base}/v1/services/api/instances/spare/maintenance"
    async with running.http.put(url, json={"enable": True, "reason": "deploy"}) as resp:
        assert resp.status == 200
    assert await browse() == ["_api._tcp.service.local. good._api._tcp.service.local."]
    msg = await running.query("_services._dns-sd._udp.service.local", "PTR")
    assert texts(msg, "answer", "PTR") == [
        "_services._dns-sd._udp.service.local. _api._tcp.service.local."
    ]
    url = f"{running.base}/v1/services/api/instances/good/maintenance"
    async with running.http.put(url, json={"enable": True, "reason": "deploy"}) as resp:
        assert resp.status == 200
    msg = await running.query("_services._dns-sd._udp.service.local", "PTR")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []
