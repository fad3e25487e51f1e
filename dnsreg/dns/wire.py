"""DNS messages on the wire: decode a query, encode a reply. Pure.

Decoding is hand-written because the server needs two things a general
parser does not give cheaply: the exact bytes of the client's question (it is
echoed verbatim, letter case included, RFC 1035 §4.1.1 / the 0x20 defence)
and a verdict on every malformed packet without raising through the server.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from dnsreg.core.errors import (
    Conflict,
    DnsregError,
    Forbidden,
    InvalidInput,
    NotInZone,
    PrerequisiteFailed,
    Refused,
    Unauthorized,
)
from dnsreg.core.names import MAX_NAME_OCTETS, Name
from dnsreg.dns.answers import Kind, Reply
from dnsreg.dns.records import IXFR, OPT, SOA, TSIG, SRVData, Writer

HEADER = struct.Struct("!HHHHHH")
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
OPCODE_MASK = 0x7800
EDE_OPTION = 15  # RFC 8914 §2
EDE_OTHER = 0  # RFC 8914 §4.1

PLAIN_UDP_LIMIT = 512  # RFC 1035 §4.2.1
EDNS_UDP_LIMIT = 1232  # DNS flag day 2020: fits the IPv6 minimum MTU without fragments
TCP_LIMIT = 65535
QUESTION_POINTER = b"\xc0\x0c"  # RFC 1035 §4.1.4: the question's name sits at offset 12
SRV_TARGET_AT = 2 + 10 + 6  # owner pointer, type/class/TTL/RDLENGTH, priority/weight/port


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    YXDOMAIN = 6  # RFC 2136 §2.2: the prerequisite rcodes
    YXRRSET = 7
    NXRRSET = 8
    NOTAUTH = 9  # RFC 8945 §5.2: TSIG verification failed; RFC 2136: not our zone
    NOTZONE = 10  # RFC 2136 §2.2: a name outside the zone section's zone
    BADVERS = 16  # RFC 6891 §6.1.3: extended, upper 8 bits travel in the OPT TTL


class Opcode(enum.IntEnum):
    QUERY = 0
    NOTIFY = 4  # RFC 1996
    UPDATE = 5  # RFC 2136


# The one place where an answer kind becomes an rcode.
RCODE_FOR_KIND = {
    Kind.ANSWER: Rcode.NOERROR,
    Kind.NODATA: Rcode.NOERROR,  # RFC 2308 §2.2: NODATA is NOERROR with no answer
    Kind.REFERRAL: Rcode.NOERROR,
    Kind.NXDOMAIN: Rcode.NXDOMAIN,
    Kind.REFUSED: Rcode.REFUSED,
}


def rcode_for_error(exc: DnsregError) -> Rcode:
    """The one place where an error becomes an rcode (a DNS UPDATE's outcome).

    RFC 2136 §3: a prerequisite names its own rcode, a name outside the zone is
    NOTZONE, an unknown zone NOTAUTH, a malformed update FORMERR, a refusal by
    policy (rights, admission, name clashes) REFUSED; the store failing SERVFAIL.
    """
    if isinstance(exc, PrerequisiteFailed | NotInZone) and exc.detail in Rcode.__members__:
        return Rcode[exc.detail]
    if isinstance(exc, InvalidInput):
        return Rcode.FORMERR
    if isinstance(exc, Refused | Forbidden | Unauthorized | Conflict):
        return Rcode.REFUSED
    return Rcode.SERVFAIL


def is_update(data: bytes) -> bool:
    """A request (QR clear) with opcode UPDATE (RFC 2136 §2.2)."""
    return len(data) >= HEADER.size and data[2] & 0xF8 == Opcode.UPDATE << 3


def error_reply(data: bytes, rcode: Rcode) -> bytes | None:
    """A bare reply with ``rcode`` to the message ``data`` (None: not even a header)."""
    if len(data) < HEADER.size:
        return None
    msg_id, flags = struct.unpack_from("!HH", data)
    return _error_reply(msg_id, flags, rcode)


@dataclass(frozen=True, slots=True)
class Edns:
    version: int
    udp_size: int
    do: bool


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    question: bytes  # the client's question section, byte for byte
    qname: Name  # folded to lower case
    qtype: int
    qclass: int
    edns: Edns | None
    # The last additional record is a TSIG (RFC 8945 §5.1): the query leaves the cached path.
    signed: bool = False

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11


class Malformed(Exception):
    """The packet cannot be answered normally; ``reply`` is what to send (None: drop)."""

    def __init__(self, reply: bytes | None, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


def _error_reply(
    msg_id: int, flags: int, rcode: Rcode, question: bytes = b"", edns: Edns | None = None
) -> bytes:
    # Keep opcode and RD (RFC 1035 §4.1.1 says RD is copied); drop every other request bit.
    out_flags = QR | (flags & (OPCODE_MASK | RD)) | (rcode & 0xF)
    header = HEADER.pack(msg_id, out_flags, 1 if question else 0, 0, 0, 1 if edns else 0)
    body = header + question
    if edns is not None:
        body += _opt(rcode, edns, ())
    return body


def _opt(rcode: int, edns: Edns, ede: tuple[tuple[int, str], ...]) -> bytes:
    options = b"".join(
        struct.pack("!HHH", EDE_OPTION, 2 + len(text.encode()), code) + text.encode()
        for code, text in ede
    )
    # RFC 6891 §6.1.3: TTL = extended rcode (upper 8 bits) | version | DO | Z.
    # RFC 3225 §3: the DO bit is copied from the query.
    ttl = ((rcode >> 4) << 24) | (0x8000 if edns.do else 0)
    return b"\0" + struct.pack("!HHIH", OPT, EDNS_UDP_LIMIT, ttl, len(options)) + options


def _skip_name(data: bytes, pos: int) -> int:
    """Step over a possibly compressed name; return the offset after it."""
    while True:
        if pos >= len(data):
            raise ValueError("name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > len(data):
                raise ValueError("truncated pointer")
            return pos + 2
        if length & 0xC0:
            raise ValueError("reserved label type")
        pos += 1 + length


def decode_query(data: bytes) -> Query:
    """Parse a query; raise Malformed with the reply to send (or None to drop)."""
    if len(data) < HEADER.size:
        raise Malformed(None, "shorter than a DNS header")
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        raise Malformed(None, "a response, not a query")  # never answer answers (loops)
    opcode = (flags & OPCODE_MASK) >> 11
    if opcode == Opcode.NOTIFY:
        # SPEC §2: we are the primary of our zones; a NOTIFY to us is refused.
        raise Malformed(_error_reply(msg_id, flags, Rcode.REFUSED), "NOTIFY sent to a primary")
    if opcode != Opcode.QUERY:
        raise Malformed(_error_reply(msg_id, flags, Rcode.NOTIMP), f"opcode {opcode}")
    formerr = _error_reply(msg_id, flags, Rcode.FORMERR)
    if qdcount != 1:
        raise Malformed(formerr, f"QDCOUNT={qdcount}")
    # Question: uncompressed labels (a pointer here could only point into the header).
    pos = HEADER.size
    labels: list[str] = []
    while True:
        if pos >= len(data):
            raise Malformed(formerr, "question runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:
            raise Malformed(formerr, "compressed or oversized label in the question")
        label = data[pos + 1 : pos + 1 + length]
        if len(label) != length:
            raise Malformed(formerr, "label runs past the end")
        labels.append(label.lower().decode("latin-1"))
        pos += 1 + length
    if pos - HEADER.size > MAX_NAME_OCTETS:
        raise Malformed(formerr, "name longer than 255 octets")
    if pos + 4 > len(data):
        raise Malformed(formerr, "question has no type and class")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    question = data[HEADER.size : pos]
    formerr = _error_reply(msg_id, flags, Rcode.FORMERR, question)
    if ancount or (nscount and not (qtype == IXFR and nscount == 1)):
        # A standard query carries nothing in these sections (RFC 1035 §4.1; NSD agrees),
        # except the client's SOA in an IXFR query's authority section (RFC 1995 §3).
        raise Malformed(formerr, "records in the answer or authority section of a query")
    edns: Edns | None = None
    signed = False
    try:
        for _ in range(nscount):
            pos = _skip_name(data, pos)
            if pos + 10 > len(data):
                raise ValueError("truncated record")
            rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, pos)
            if rtype != SOA:
                raise ValueError("an IXFR query's authority section holds the client's SOA")
            pos += 10 + rdlen
            if pos > len(data):
                raise ValueError("record data runs past the end")
        for index in range(arcount):
            owner_at = pos
            pos = _skip_name(data, pos)
            if pos + 10 > len(data):
                raise ValueError("truncated record")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            pos += 10
            if pos + rdlen > len(data):
                raise ValueError("record data runs past the end")
            if rtype == OPT:
                # RFC 6891 §6.1.1: one OPT, in the additional section, owned by the root.
                if edns is not None or data[owner_at] != 0:
                    raise ValueError("misplaced or repeated OPT")
                _check_options(data[pos : pos + rdlen])
                edns = Edns(version=(ttl >> 16) & 0xFF, udp_size=rclass, do=bool(ttl & 0x8000))
            elif rtype == TSIG:
                # RFC 8945 §5.1: the TSIG record is the last one; elsewhere it is FORMERR.
                if index != arcount - 1:
                    raise ValueError("TSIG is not the last record")
                signed = True
            pos += rdlen
        if pos != len(data):
            raise ValueError("trailing bytes after the last record")
    except ValueError as exc:
        raise Malformed(_error_reply(msg_id, flags, Rcode.FORMERR, question), str(exc)) from exc
    if edns is not None and edns.version > 0:
        # RFC 6891 §6.1.3: answer BADVERS with the highest version we speak (0).
        raise Malformed(_error_reply(msg_id, flags, Rcode.BADVERS, question, edns), "EDNS version")
    return Query(msg_id, flags, question, tuple(labels), qtype, qclass, edns, signed)


def _check_options(rdata: bytes) -> None:
    pos = 0
    while pos < len(rdata):
        if pos + 4 > len(rdata):
            raise ValueError("truncated EDNS option")
        _, length = struct.unpack_from("!HH", rdata, pos)
        pos += 4 + length
        if pos > len(rdata):
            raise ValueError("EDNS option runs past the end")


def size_limit(query: Query, tcp: bool) -> int:
    """How large a reply may be (RFC 1035 §4.2.1, RFC 6891 §6.2.5)."""
    if tcp:
        return TCP_LIMIT
    if query.edns is None:
        return PLAIN_UDP_LIMIT
    return max(PLAIN_UDP_LIMIT, min(query.edns.udp_size, EDNS_UDP_LIMIT))


def encode_reply(query: Query, reply: Reply, limit: int) -> bytes:
    """Encode ``reply`` to fit ``limit`` bytes (SPEC §2 "Answers are bounded").

    Additional records go first when space runs out (they are optional).
    Answer records are written while they fit: over UDP a reply that could
    not carry them all sets TC so the client retries over TCP (RFC 2181 §9);
    over TCP it carries what fits in 65 535 octets, never TC with an empty
    answer, and says "N of M" in an EDE (RFC 8914 §4.1, code 0). The answer
    builder already ordered the records by weighted random draw, so what
    fits is a weighted random subset.
    """
    rcode = RCODE_FOR_KIND[reply.kind]
    flags = QR | (query.flags & RD) | (AA if reply.authoritative else 0) | rcode
    edns = query.edns
    ede = reply.ede if edns is not None else ()
    opt = _opt(rcode, edns, ede) if edns is not None else b""
    room = limit - len(opt)

    w = Writer(HEADER.pack(0, 0, 0, 0, 0, 0) + query.question)
    # Let answers point at the client's question name (RFC 1035 §4.1.4).
    at = HEADER.size
    for i in range(len(query.qname)):
        w.owner_offsets.setdefault(query.qname[i:], at)
        at += 1 + len(query.qname[i])
    buf = w.buf
    marks: list[int] = []
    qname = query.qname
    for record in reply.answer:
        mark = len(buf)
        if record.wire and record.owner == qname:
            # Pre-encoded, owned by the question's name: a pointer to it (offset 12).
            buf += QUESTION_POINTER
            buf += record.wire
            rdata = record.rdata
            if isinstance(rdata, SRVData) and mark + SRV_TARGET_AT < 0x3FFF:
                # The (uncompressed, RFC 2782) target: its address records may point here.
                w.offsets.setdefault(rdata.target, mark + SRV_TARGET_AT)
        else:
            w.record(record)
        if len(buf) > room:
            del buf[mark:]  # records only point backwards: what precedes stays valid
            break
        marks.append(mark)
    answered = len(marks)
    total = max(reply.available, len(reply.answer))
    if answered < total:
        if edns is not None:
            # Say how much is missing; make room for saying it by dropping records if need be.
            opt = _opt(rcode, edns, (*ede, (EDE_OTHER, f"{answered} of {total} records")))
            while answered > 1 and len(buf) + len(opt) > limit:
                answered -= 1
                del buf[marks[answered] :]
                opt = _opt(rcode, edns, (*ede, (EDE_OTHER, f"{answered} of {total} records")))
            if len(buf) + len(opt) > limit:
                opt = _opt(rcode, edns, ede)
        tc = TC if limit < TCP_LIMIT or answered == 0 else 0
        HEADER.pack_into(buf, 0, query.id, flags | tc, 1, answered, 0, 1 if opt else 0)
        return bytes(buf) + opt
    for record in reply.authority:
        w.record(record)
    if len(buf) > room:
        header = HEADER.pack(query.id, flags | TC, 1, 0, 0, 1 if opt else 0)
        return header + query.question + opt
    additional = 0
    offsets = w.offsets
    for record in reply.additional:
        mark = len(buf)
        pointer = offsets.get(record.owner) if record.wire else None
        if pointer is not None:
            buf += (0xC000 | pointer).to_bytes(2, "big")
            buf += record.wire
        else:
            w.record(record)
        if len(buf) > room:
            del buf[mark:]  # nothing after this record can point into it
            break
        additional += 1
    HEADER.pack_into(
        buf,
        0,
        query.id,
        flags,
        1,
        len(reply.answer),
        len(reply.authority),
        additional + (1 if opt else 0),
    )
    return bytes(buf) + opt
