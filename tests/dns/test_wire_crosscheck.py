"""Our hand-written codec, checked against two independent ones (dnslib and dnspython).

The reply encoder and the query decoder are hand-written for speed; dnslib and
dnspython are the references. Every reply must parse in both with the records
we meant, and on mutated packets our decoder must never accept what they reject
as a query nor crash.
"""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dnslib
import pytest

from dnsreg.core.names import parse_name
from dnsreg.dns.answers import Question, Settings, answer
from dnsreg.dns.wire import Malformed, decode_query, encode_reply, size_limit
from tests.dns.test_answers import CASES, ORIGIN, TYPES, _static, build_registry


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.qname}{c.qtype}{'/tcp' if c.tcp else ''}"
)
def test_every_table_reply_parses_in_dnslib_and_dnspython(case: object) -> None:
    qname, qtype, tcp = case.qname, case.qtype, case.tcp  # type: ignore[attr-defined]
    raw = dns.message.make_query(qname.upper(), TYPES[qtype], use_edns=0).to_wire()
    query = decode_query(raw)
    reply = answer(
        Question(parse_name(qname), TYPES[qtype], tcp=tcp),
        build_registry(),
        _static(),
        Settings(origin=ORIGIN),
        random.Random(1),
    )
    wire = encode_reply(query, reply, size_limit(query, tcp))

    lib = dnslib.DNSRecord.parse(wire)
    assert lib.header.id == query.id
    assert str(lib.q.qname) == qname.upper()
    assert sorted(str(rr.rname).lower() for rr in lib.rr) == sorted(
        ".".join(r.owner) + "." for r in reply.answer
    )
    assert len(lib.auth) == len(reply.authority)

    msg = dns.message.from_wire(wire)
    got = sorted(
        f"{rrset.name.to_text().lower()} {rrset.ttl} IN "
        f"{dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
        for rrset in msg.answer
        for rd in rrset
    )
    assert got == sorted(" ".join(r.text().split()) for r in reply.answer)


def _reference_query(data: bytes) -> dns.message.Message | None:
    """The packet as dnspython reads it, if it is a standard query we must answer normally.

    dnspython is the strict reference here (dnslib ignores trailing junk).
    """
    try:
        msg = dns.message.from_wire(data)
    except Exception:  # dnspython raises many types on garbage
        return None
    if msg.flags & dns.flags.QR or msg.opcode() != 0 or len(msg.question) != 1:
        return None
    if msg.answer or msg.authority or (msg.edns > 0):
        return None
    return msg


def _decode(data: bytes) -> tuple[object | None, bytes | None]:
    try:
        return decode_query(data), None
    except Malformed as bad:
        return None, bad.reply


def test_mutated_packets_never_crash_and_agree_with_dnslib() -> None:
    rng = random.Random(20261124)
    seeds = [
        dns.message.make_query("web.service.local", "A").to_wire(),
        dns.message.make_query("_web._tcp.service.local", "SRV", use_edns=0).to_wire(),
        dns.message.make_query("x.example.com", "TXT", want_dnssec=True).to_wire(),
    ]
    agreed = 0
    for _ in range(5000):
        packet = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            if action < 0.5 and packet:
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            elif action < 0.75:
                del packet[rng.randrange(len(packet) + 1) :]
            else:
                packet += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        data = bytes(packet)
        query, error_reply = _decode(data)
        if error_reply is not None:
            # Every error reply is itself a well-formed message carrying the query's id.
            # (dnspython, not dnslib: dnslib rejects labels that are not UTF-8.)
            assert dns.message.from_wire(error_reply).id == int.from_bytes(data[:2])
        ref = _reference_query(data)
        if ref is None:
            continue
        # What the reference reads as a plain query, we answer as one, with the same question.
        assert query is not None, data.hex()
        labels = tuple(label.lower() for label in ref.question[0].name.labels if label)
        assert labels == tuple(q.encode("latin-1") for q in query.qname)  # type: ignore[attr-defined]
        assert ref.question[0].rdtype == query.qtype  # type: ignore[attr-defined]
        agreed += 1
    assert agreed > 100  # the mutations left plenty of valid queries to compare
