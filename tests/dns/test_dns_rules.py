"""SPEC §2 over real sockets: the DNS rules that are easy to get wrong.

Every test here talks to an in-process server on 127.0.0.1 port 0 with
dnspython or with hand-made bytes where the exact bytes are the point.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.helpers import Running, tcp_raw, udp_exchange, udp_raw

QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
Z, AD, CD = 0x0040, 0x0020, 0x0010


def query_wire(
    name: str,
    rdtype: str = "A",
    *,
    msg_id: int = 0x4242,
    flags: int = RD,
    edns: int | None = None,
    payload: int = 1232,
    options: list[dns.edns.Option] | None = None,
) -> bytes:
    """A query as bytes, with exactly the header flags given (dnspython cannot set Z)."""
    q = dns.message.make_query(
        name,
        rdtype,
        use_edns=edns if edns is not None else False,
        payload=payload,
        options=options,
        id=msg_id,
    )
    data = bytearray(q.to_wire())
    struct.pack_into("!H", data, 2, flags)
    return bytes(data)


def header_flags(reply: bytes) -> int:
    return int(struct.unpack_from("!H", reply, 2)[0])


def soa_of(msg: dns.message.Message) -> Any:
    (rrset,) = msg.authority
    assert rrset.rdtype == dns.rdatatype.SOA
    return rrset


async def register_many(running: Running, service: str, count: int, **body: Any) -> None:
    await asyncio.gather(
        *(
            running.register(
                service, f"{service}-{n}", address=f"10.1.{n // 250}.{n % 250 + 1}", **body
            )
            for n in range(count)
        )
    )


def records(section: list[Any], rdtype: int) -> list[Any]:
    return [r for rrset in section if rrset.rdtype == rdtype for r in rrset]


# ----------------------------------------------------------------------- header bits


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "authoritative"),
    [
        ("web.service.local", "A", dns.rcode.NOERROR, True),
        ("web.service.local", "TXT", dns.rcode.NOERROR, True),  # NODATA
        ("nope.service.local", "A", dns.rcode.NXDOMAIN, True),
        ("service.local", "SOA", dns.rcode.NOERROR, True),
        ("example.org", "A", dns.rcode.REFUSED, False),
    ],
)
async def test_aa_set_ra_clear_rd_copied_no_other_request_bits(
    running: Running, name: str, rdtype: str, rcode: int, authoritative: bool
) -> None:
    await running.register("web", "web-1")
    # Twice each: the first reply is built, the second comes from the answer cache.
    for request_flags in (RD | AD | CD | Z, RD | AD | CD | Z, AD | CD | Z, AD | CD | Z, 0):
        reply = await udp_raw(running.dns_port, query_wire(name, rdtype, flags=request_flags))
        assert reply is not None
        flags = header_flags(reply)
        assert flags & QR
        assert bool(flags & AA) is authoritative
        assert not flags & RA, "no recursion is offered (RFC 1035 §4.1.1)"
        assert flags & RD == request_flags & RD, "RD is copied from the query"
        assert not flags & (AD | CD | Z), "AD, CD and Z are never copied into replies"
        assert not flags & TC
        assert flags & 0xF == rcode
        assert reply[:2] == b"\x42\x42"


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        # QDCOUNT=2: FORMERR
        (b"\x42\x42\x01\x70\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x01" * 2, 1),
        # opcode 2 (STATUS): NOTIMP
        (b"\x42\x42\x11\x70\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01", 4),
    ],
)
async def test_error_replies_copy_rd_only(running: Running, packet: bytes, rcode: int) -> None:
    reply = await udp_raw(running.dns_port, packet)
    assert reply is not None
    flags = header_flags(reply)
    assert flags & QR
    assert flags & RD
    assert not flags & (AD | CD | Z | RA | AA | TC)
    assert flags & 0xF == rcode


# ------------------------------------------------------------------ negative answers


async def test_nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl(running: Running) -> None:
    await running.register("web", "web-1", tags=["primary"], meta={"v": "2"})
    cases = [
        ("nope.service.local", "A", dns.rcode.NXDOMAIN),
        ("other.primary.web.service.local", "A", dns.rcode.NXDOMAIN),  # unknown tag pair
        ("missing.web.service.local", "A", dns.rcode.NXDOMAIN),  # neither id nor tag
        ("web.service.local", "TXT", dns.rcode.NOERROR),  # exists, no TXT
        ("web.service.local", "AAAA", dns.rcode.NOERROR),  # exists, IPv4 only
        ("web-1.web.service.local", "MX", dns.rcode.NOERROR),
        ("service.local", "A", dns.rcode.NOERROR),  # apex has SOA and NS only
    ]
    for name, rdtype, rcode in cases:
        msg = await running.query(name, rdtype)
        assert msg.rcode() == rcode, (name, rdtype)
        assert msg.answer == [], (name, rdtype)
        assert msg.flags & dns.flags.AA
        soa = soa_of(msg)  # RFC 2308 §2.1, §2.2
        assert soa.name.to_text() == "service.local."
        assert soa.ttl == 5, "SOA TTL in a negative reply = the negative TTL"
        assert soa[0].minimum == 5


async def test_empty_non_terminal_above_a_service_is_nodata(running: Running) -> None:
    await running.register("web", "web-1")
    msg = await running.query("_tcp.service.local", "SRV")
    assert msg.rcode() == dns.rcode.NOERROR  # NODATA, never NXDOMAIN
    assert msg.answer == []
    soa_of(msg)
    # Nothing registered with proto udp, but _dns-sd._udp (RFC 6763 §9) lies below it.
    msg = await running.query("_udp.service.local", "SRV")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []
    soa_of(msg)
    # And the name below it answers.
    msg = await running.query("_web._tcp.service.local", "SRV")
    assert [r.to_text() for r in records(msg.answer, dns.rdatatype.SRV)] == [
        "0 1 8080 web-1.web.service.local."
    ]


async def test_service_without_served_instance_is_nodata(running: Running) -> None:
    await running.register("web", "web-1", tags=["primary"])
    # Answered (and cached) first: the maintenance change must reach DNS at once.
    assert (await running.query("web.service.local", "A")).answer
    assert (await running.query("_web._tcp.service.local", "SRV")).answer
    url = f"{running.base}/v1/services/web/instances/web-1/maintenance"
    async with running.http.put(url, json={"enable": True, "reason": "upgrade"}) as resp:
        assert resp.status == 200, await resp.text()
    for name, rdtype in [
        ("web.service.local", "A"),
        ("web.service.local", "SRV"),
        ("primary.web.service.local", "A"),
        ("web-1.web.service.local", "A"),
        ("_web._tcp.service.local", "SRV"),
    ]:
        msg = await running.query(name, rdtype)
        assert msg.rcode() == dns.rcode.NOERROR, (name, rdtype, msg)
        assert msg.answer == [], (name, rdtype)
        soa_of(msg)
    async with running.http.put(url, json={"enable": False}) as resp:
        assert resp.status == 200
    msg = await running.query("web.service.local", "A")
    assert [r.to_text() for r in records(msg.answer, dns.rdatatype.A)] == ["10.0.0.5"]


async def test_apex_soa_serial_is_the_revision(running: Running) -> None:
    first = await running.register("web", "web-1")
    second = await running.register("api", "api-1")
    assert second["revision"] == first["revision"] + 1
    msg = await running.query("service.local", "SOA")
    (soa,) = records(msg.answer, dns.rdatatype.SOA)
    assert soa.serial == second["revision"]
    async with running.http.delete(f"{running.base}/v1/services/web/instances/web-1") as resp:
        gone = await resp.json()
    msg = await running.query("service.local", "SOA")
    (soa,) = records(msg.answer, dns.rdatatype.SOA)
    assert soa.serial == gone["revision"] == second["revision"] + 1
    # The serial in a negative answer moves too.
    msg = await running.query("nope.service.local", "A")
    assert soa_of(msg)[0].serial == gone["revision"]
    msg = await running.query("service.local", "NS")
    assert [r.to_text() for r in records(msg.answer, dns.rdatatype.NS)] == ["ns.service.local."]


# -------------------------------------------------------------------- question echo


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("WeB.SeRvIcE.LoCaL", "A"),  # answer
        ("wEb.sErViCe.lOcAl", "A"),  # same question, other case: an answer-cache hit
        ("NoPe.SeRvIcE.LoCaL", "A"),  # NXDOMAIN
        ("ExAmPlE.OrG", "A"),  # REFUSED
        ("SeRvIcE.LoCaL", "ANY"),
    ],
)
async def test_question_is_echoed_with_the_clients_letter_case(
    running: Running, name: str, rdtype: str
) -> None:
    await running.register("web", "web-1")
    await running.query("web.service.local", "A")  # warm the cache with the folded name
    for edns in (None, 0):
        packet = query_wire(name, rdtype, edns=edns)
        question_end = packet.index(b"\x00", 12) + 5
        for _ in range(2):
            reply = await udp_raw(running.dns_port, packet)
            assert reply is not None
            assert reply[12:question_end] == packet[12:question_end]
            assert dns.message.from_wire(reply).question[0].name.to_text() == name + "."


async def test_question_case_echoed_in_error_replies(running: Running) -> None:
    # Trailing garbage after the question: FORMERR, question still echoed byte for byte.
    packet = query_wire("WeB.SeRvIcE.LoCaL") + b"\x99"
    reply = await udp_raw(running.dns_port, packet)
    assert reply is not None
    assert header_flags(reply) & 0xF == dns.rcode.FORMERR
    question_end = packet.index(b"\x00", 12) + 5
    assert reply[12:question_end] == packet[12:question_end]
    # BADVERS too.
    packet = query_wire("WeB.SeRvIcE.LoCaL", edns=1)
    reply = await udp_raw(running.dns_port, packet)
    assert reply is not None
    assert reply[12:question_end] == packet[12:question_end]


# ---------------------------------------------------------------------------- EDNS


async def test_opt_echoed_only_when_the_query_has_one(running: Running) -> None:
    await running.register("web", "web-1")
    plain = await running.query("web.service.local")
    assert plain.edns == -1
    assert plain.opt is None
    with_edns = await running.query("web.service.local", use_edns=0, payload=4096)
    assert with_edns.edns == 0
    assert with_edns.rcode() == dns.rcode.NOERROR
    assert with_edns.payload == 1232  # what we accept ourselves
    # Negative and REFUSED answers echo it too.
    for name in ("nope.service.local", "example.org"):
        msg = await running.query(name, use_edns=0)
        assert msg.edns == 0, name


async def test_edns_version_above_zero_is_badvers(running: Running) -> None:
    await running.register("web", "web-1")
    for _ in range(2):  # not cached as a normal answer either
        msg = await running.query("web.service.local", use_edns=1)
        assert msg.rcode() == dns.rcode.BADVERS  # 16: extended rcode in the OPT
        assert msg.edns == 0, "the reply says the version we speak"
        assert msg.answer == []
    # Version 0 still answers normally afterwards.
    msg = await running.query("web.service.local", use_edns=0)
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer


async def test_unknown_edns_options_are_ignored(running: Running) -> None:
    await running.register("web", "web-1")
    options = [
        dns.edns.GenericOption(65001, b"whatever"),
        dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08"),  # a COOKIE
        dns.edns.GenericOption(65002, b""),
    ]
    for _ in range(2):
        msg = await running.query("web.service.local", use_edns=0, options=options)
        assert msg.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for r in records(msg.answer, dns.rdatatype.A)] == ["10.0.0.5"]
        assert msg.edns == 0
        assert all(o.otype != 65001 for o in msg.options)


async def test_udp_size_limits_and_truncation(running: Running) -> None:
    # 60 A records: 16 octets each (the owner compresses to the question): ~1000 octets.
    await register_many(running, "big", 60)
    port = running.dns_port

    async def udp(**make: Any) -> tuple[dns.message.Message, int]:
        raw = await udp_raw(port, query_wire("big.service.local", "A", **make))
        assert raw is not None
        return dns.message.from_wire(raw), len(raw)

    # No EDNS: 512 octets at most, so the answer does not fit: what fits, with TC (SPEC §2).
    msg, size = await udp()
    assert size <= 512
    assert msg.flags & dns.flags.TC
    assert 20 <= len(records(msg.answer, dns.rdatatype.A)) < 60
    # EDNS with a big buffer: capped at 1232, which this answer fits.
    msg, size = await udp(edns=0, payload=4096)
    assert size <= 1232
    assert not msg.flags & dns.flags.TC
    assert len(records(msg.answer, dns.rdatatype.A)) == 60
    # EDNS with a smaller buffer than the answer: the client's size rules.
    msg, size = await udp(edns=0, payload=700)
    assert size <= 700
    assert msg.flags & dns.flags.TC
    assert 20 <= len(records(msg.answer, dns.rdatatype.A)) < 60
    # TCP carries the whole answer.
    full = await running.query("big.service.local", "A", tcp=True)
    assert len(records(full.answer, dns.rdatatype.A)) == 60
    assert not full.flags & dns.flags.TC

    # 80 A records (~1330 octets): more than 1232 even when the client offers 4096.
    await register_many(running, "huge", 80)
    for payload in (1232, 4096, 65535):
        raw = await udp_raw(port, query_wire("huge.service.local", "A", edns=0, payload=payload))
        assert raw is not None
        assert len(raw) <= 1232
        msg = dns.message.from_wire(raw)
        assert msg.flags & dns.flags.TC, payload
        assert 50 <= len(records(msg.answer, dns.rdatatype.A)) < 80
        assert msg.edns == 0
    full = await running.query("huge.service.local", "A", tcp=True, use_edns=0)
    assert len(records(full.answer, dns.rdatatype.A)) == 80


async def test_additional_records_are_dropped_before_the_answer(running: Running) -> None:
    # 25 SRV records (43 octets each: RFC 2782 targets are not compressed) fit in 1232
    # octets; their 25 A glue records (16 octets each) do not all fit after them.
    await register_many(running, "api", 25)
    msg = await running.query("api.service.local", "SRV", use_edns=0, payload=1232)
    assert not msg.flags & dns.flags.TC
    assert len(records(msg.answer, dns.rdatatype.SRV)) == 25, "answer kept whole"
    glue = records(msg.additional, dns.rdatatype.A)
    assert 0 < len(glue) < 25, "some glue dropped, what fits kept"
    raw = await udp_raw(running.dns_port, query_wire("api.service.local", "SRV", edns=0))
    assert raw is not None
    assert len(raw) <= 1232
    # Without EDNS (512) the answer itself does not fit: TC, and the client retries on TCP.
    msg = await running.query("api.service.local", "SRV")
    assert msg.flags & dns.flags.TC
    assert 0 < len(records(msg.answer, dns.rdatatype.SRV)) < 25
    full = await running.query("api.service.local", "SRV", tcp=True)
    assert len(records(full.answer, dns.rdatatype.SRV)) == 25
    assert len(records(full.additional, dns.rdatatype.A)) == 25
    targets = {r.target.to_text() for r in records(full.answer, dns.rdatatype.SRV)}
    owners = {rr.name.to_text() for rr in full.additional}
    assert owners == targets, "every SRV target resolves in the additional section"


# -------------------------------------------------------------- malformed and odd


@pytest.mark.parametrize(
    "packet",
    [
        # Header says one question, then garbage labels running past the end.
        b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f\xff\xfe",
        # A question without type and class.
        b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00",
        # QDCOUNT=2 with two good questions.
        b"\x42\x42\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x03web\x00\x00\x01\x00\x01" * 2,
        # QDCOUNT=2 with one question: nothing else is wrong with it.
        b"\x42\x42\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01",
        # QDCOUNT=0.
        b"\x42\x42\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        # A compression pointer in the question.
        b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
        # ARCOUNT=1 but no record follows.
        b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03web\x00\x00\x01\x00\x01",
        # Two OPT records.
        b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x02\x03web\x00\x00\x01\x00\x01"
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2,
        # An EDNS option longer than its OPT.
        b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03web\x00\x00\x01\x00\x01"
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x09",
    ],
)
async def test_formerr_when_the_header_is_readable(running: Running, packet: bytes) -> None:
    for raw in (await udp_raw(running.dns_port, packet), await tcp_raw(running.dns_port, packet)):
        assert raw is not None
        msg_id, flags = struct.unpack_from("!HH", raw)
        assert msg_id == 0x4242
        assert flags & QR
        assert flags & 0xF == dns.rcode.FORMERR
        dns.message.from_wire(raw)  # our error reply is itself well formed


async def test_too_short_for_a_header_gets_nothing(running: Running) -> None:
    for packet in (b"", b"\x42", b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00"):
        assert await udp_raw(running.dns_port, packet) is None


@pytest.mark.parametrize(
    ("opcode", "rcode"),
    # SPEC §2: other opcodes NOTIMP; a NOTIFY to the primary is REFUSED.
    [(1, dns.rcode.NOTIMP), (2, dns.rcode.NOTIMP), (15, dns.rcode.NOTIMP), (4, dns.rcode.REFUSED)],
)
async def test_other_opcodes_are_notimp(running: Running, opcode: int, rcode: int) -> None:
    packet = query_wire("web.service.local", flags=RD | (opcode << 11))
    raw = await udp_raw(running.dns_port, packet)
    assert raw is not None
    flags = header_flags(raw)
    assert flags & QR
    assert (flags >> 11) & 0xF == opcode
    assert flags & 0xF == rcode


async def test_responses_are_never_answered(running: Running) -> None:
    await running.register("web", "web-1")
    packets = [
        query_wire("web.service.local", flags=QR | RD),
        query_wire("web.service.local", flags=QR | AA, edns=0),
        query_wire("web.service.local", flags=QR | (5 << 11)),  # QR=1 with an odd opcode
        b"\x42\x42\x80\x00\x00\x02\x00\x00\x00\x00\x00\x00",  # QR=1 and QDCOUNT=2
    ]
    replies = await udp_exchange(running.dns_port, packets)
    assert replies == []
    for packet in packets:
        assert await tcp_raw(running.dns_port, packet) is None


async def test_any_is_minimal_over_udp_and_full_over_tcp(running: Running) -> None:
    await running.register("web", "web-1", meta={"version": "2"})
    for name, full_types in [
        ("web-1.web.service.local", {dns.rdatatype.A, dns.rdatatype.SRV, dns.rdatatype.TXT}),
        ("service.local", {dns.rdatatype.SOA, dns.rdatatype.NS}),
        ("web.service.local", {dns.rdatatype.A, dns.rdatatype.SRV}),
    ]:
        for _ in range(2):
            udp = await running.query(name, "ANY")
            assert udp.rcode() == dns.rcode.NOERROR
            assert len(udp.answer) == 1, f"RFC 8482: one RRset over UDP for {name}"
            assert udp.answer[0].rdtype in full_types
            tcp = await running.query(name, "ANY", tcp=True)
            assert {rr.rdtype for rr in tcp.answer} == full_types, name


async def test_names_outside_our_zones_are_refused(running: Running) -> None:
    for name in ("example.org", "local", "service.localx", "xservice.local", "."):
        msg = await running.query(name, "A")
        assert msg.rcode() == dns.rcode.REFUSED, name
        assert not msg.flags & dns.flags.AA
        assert msg.answer == []
        assert msg.authority == []


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
async def test_zone_transfers_are_refused(running: Running, rdtype: str) -> None:
    # No allow_transfer configured (transfers themselves: tests/dns/test_transfer_live.py).
    await running.register("web", "web-1")
    for tcp in (False, True):
        raw = await (tcp_raw if tcp else udp_raw)(
            running.dns_port, query_wire("service.local", rdtype)
        )
        assert raw is not None
        if rdtype == "IXFR" and not tcp:
            # RFC 1995 §2: over UDP, the current SOA (public anyway) and nothing else.
            assert header_flags(raw) & 0xF == dns.rcode.NOERROR
            assert struct.unpack_from("!H", raw, 6)[0] == 1, "the SOA alone"
            continue
        assert header_flags(raw) & 0xF == dns.rcode.REFUSED
        assert struct.unpack_from("!H", raw, 6)[0] == 0, "no records"
