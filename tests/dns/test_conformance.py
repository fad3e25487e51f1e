"""Small protocol conformance points (issue 12 item 6) against a running server."""

from __future__ import annotations

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.helpers import Running


async def test_qclass_any_is_not_authoritative(running: Running) -> None:
    q = dns.message.make_query("web.service.local", "A", rdclass=dns.rdataclass.ANY)
    await running.register("web", "web-1", address="10.0.0.5")
    msg = await dns.asyncquery.udp(q, "127.0.0.1", port=running.dns_port, timeout=3)
    assert msg.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in msg.answer[0]] == ["10.0.0.5"]  # still answered
    assert not msg.flags & dns.flags.AA  # but not as the authority for every class
    msg = await running.query("web.service.local", "A")
    assert msg.flags & dns.flags.AA


async def test_ixfr_query_with_its_soa_is_not_formerr(running: Running) -> None:
    # RFC 1995 §3: an IXFR query carries the client's SOA in the authority section.
    q = dns.message.make_query("service.local", "IXFR")
    soa = "ns.service.local. hostmaster.service.local. 1 3600 600 86400 5"
    q.authority.append(dns.rrset.from_text("service.local.", 5, "IN", "SOA", soa))
    msg = await dns.asyncquery.udp(q, "127.0.0.1", port=running.dns_port, timeout=3)
    assert msg.rcode() != dns.rcode.FORMERR
    # Anything else in the authority section of a query still is.
    q = dns.message.make_query("service.local", "A")
    q.authority.append(dns.rrset.from_text("service.local.", 5, "IN", "SOA", soa))
    msg = await dns.asyncquery.udp(q, "127.0.0.1", port=running.dns_port, timeout=3)
    assert msg.rcode() == dns.rcode.FORMERR
