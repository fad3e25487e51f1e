"""Resource records as the answer builder produces them, and their wire encoding.

The reply encoder is hand-written: dnslib's packer costs ~100 µs per reply,
which a resolver fleet turns into the server's ceiling (measured in issue 5);
this one, with RFC 1035 §4.1.4 name compression, costs a few µs.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from dnsreg.core.names import Name, to_text

# RR types (RFC 1035 §3.2.2, RFC 3596, RFC 2782, RFC 6891)
A, NS, CNAME, SOA, PTR, HINFO, MX, TXT, AAAA, SRV, DNAME, OPT, ANY = (
    1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 39, 41, 255,
)  # fmt: skip
AXFR, IXFR = 252, 251
TSIG = 250  # RFC 8945
IN = 1

TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", HINFO: "HINFO",
              MX: "MX", TXT: "TXT", AAAA: "AAAA", SRV: "SRV", DNAME: "DNAME"}  # fmt: skip


class Writer:
    """A growing DNS message with a compression table (RFC 1035 §4.1.4)."""

    __slots__ = ("buf", "offsets", "owner_offsets")

    def __init__(self, prefix: bytes = b"") -> None:
        self.buf = bytearray(prefix)
        self.offsets: dict[Name, int] = {}
        # Suffixes of the client's question, in the client's letter case: owner names
        # may point there (they then echo its case), RDATA names may not, so the data
        # a client reads is spelled the same whoever asked.
        self.owner_offsets: dict[Name, int] = {}

    def name(self, name: Name, *, compress: bool = True, owner: bool = False) -> None:
        for i in range(len(name)):
            suffix = name[i:]
            if compress:
                pointer = self.offsets.get(suffix)
                if pointer is None and owner:
                    pointer = self.owner_offsets.get(suffix)
                if pointer is not None:
                    self.buf += struct.pack("!H", 0xC000 | pointer)
                    return
            if len(self.buf) < 0x3FFF:
                self.offsets.setdefault(suffix, len(self.buf))
            label = name[i].encode("latin-1")
            self.buf.append(len(label))
            self.buf += label
        self.buf.append(0)

    def record(self, record: Record) -> None:
        self.name(record.owner, owner=True)
        if record.wire:
            self.buf += record.wire
            return
        self.buf += struct.pack("!HHI", record.rtype, IN, record.ttl)
        at = len(self.buf)
        self.buf += b"\0\0"
        record.rdata.write(self)
        struct.pack_into("!H", self.buf, at, len(self.buf) - at - 2)


@dataclass(frozen=True, slots=True)
class Address:
    """A or AAAA data."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address

    def write(self, w: Writer) -> None:
        w.buf += self.address.packed

    def text(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class Target:
    """A single domain name: NS, CNAME, PTR, DNAME."""

    target: Name
    compress: bool = True  # RFC 3597 §4: only the RFC 1035 types may be compressed

    def write(self, w: Writer) -> None:
        w.name(self.target, compress=self.compress)

    def text(self) -> str:
        return to_text(self.target)


@dataclass(frozen=True, slots=True)
class MXData:
    preference: int
    exchange: Name

    def write(self, w: Writer) -> None:
        w.buf += struct.pack("!H", self.preference)
        w.name(self.exchange)

    def text(self) -> str:
        return f"{self.preference} {to_text(self.exchange)}"


@dataclass(frozen=True, slots=True)
class SRVData:
    priority: int
    weight: int
    port: int
    target: Name

    def write(self, w: Writer) -> None:
        w.buf += struct.pack("!HHH", self.priority, self.weight, self.port)
        # RFC 2782: the target name is not compressed.
        w.name(self.target, compress=False)

    def text(self) -> str:
        return f"{self.priority} {self.weight} {self.port} {to_text(self.target)}"


@dataclass(frozen=True, slots=True)
class TXTData:
    strings: tuple[bytes, ...]

    def write(self, w: Writer) -> None:
        for s in self.strings:
            w.buf.append(len(s))
            w.buf += s

    def text(self) -> str:
        return " ".join('"' + s.decode(errors="replace") + '"' for s in self.strings)


@dataclass(frozen=True, slots=True)
class SOAData:
    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int

    def write(self, w: Writer) -> None:
        w.name(self.mname)
        w.name(self.rname)
        w.buf += struct.pack(
            "!IIIII", self.serial, self.refresh, self.retry, self.expire, self.minimum
        )

    def text(self) -> str:
        return (
            f"{to_text(self.mname)} {to_text(self.rname)} {self.serial} {self.refresh} "
            f"{self.retry} {self.expire} {self.minimum}"
        )


@dataclass(frozen=True, slots=True)
class Opaque:
    """RDATA already in wire form (static records of types we need not look inside)."""

    data: bytes
    presentation: str = ""

    def write(self, w: Writer) -> None:
        w.buf += self.data

    def text(self) -> str:
        return self.presentation or f"\\# {len(self.data)} {self.data.hex()}"


RData = Address | Target | MXData | SRVData | TXTData | SOAData | Opaque


@dataclass(frozen=True, slots=True)
class Record:
    owner: Name
    rtype: int
    ttl: int
    rdata: RData
    # Type, class, TTL, RDLENGTH and RDATA already encoded (names in RDATA would need
    # compression, so only for RDATA without names): the encoder appends it after the owner.
    wire: bytes = field(default=b"", compare=False, repr=False)

    def text(self) -> str:
        kind = TYPE_NAMES.get(self.rtype, f"TYPE{self.rtype}")
        return f"{to_text(self.owner)} {self.ttl} IN {kind} {self.rdata.text()}"


def address_record(
    owner: Name, rtype: int, ttl: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> Record:
    """An A or AAAA record with its wire form made once (answers reuse it per revision)."""
    packed = address.packed
    return Record(
        owner,
        rtype,
        ttl,
        Address(address),
        struct.pack("!HHIH", rtype, IN, ttl, len(packed)) + packed,
    )


def srv_record(owner: Name, ttl: int, data: SRVData) -> Record:
    """An SRV record with its wire form made once; the target is never compressed (RFC 2782)."""
    w = Writer()
    data.write(w)
    rdata = bytes(w.buf)
    return Record(owner, SRV, ttl, data, struct.pack("!HHIH", SRV, IN, ttl, len(rdata)) + rdata)
