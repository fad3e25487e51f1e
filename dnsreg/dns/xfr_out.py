"""Outgoing zone transfers: AXFR (RFC 5936) and IXFR (RFC 1995) of the dynamic zone. Pure.

Only over TCP (RFC 5936 §4.2; an IXFR over UDP gets the current SOA from the
answer builder, RFC 1995 §2). Who may transfer: a client whose address is in
``allow_transfer``, or one whose query is signed with a TSIG key holding the
``transfer`` right (see :mod:`dnsreg.dns.tsig`). Everyone else: REFUSED
(RFC 5936 §2.2.1 lets a server refuse).

The reply is a sequence of messages, each below :data:`MESSAGE_LIMIT` so a
large zone streams instead of failing (RFC 5936 §2.2): the TCP listener frames
and writes them in order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import dns.exception
import dns.message
import dns.rdatatype

from dnsreg.core.names import Name
from dnsreg.dns.answers import Kind, Reply
from dnsreg.dns.records import AXFR, IXFR, Record, SOAData, Writer
from dnsreg.dns.transfer import Journal, serial_lt
from dnsreg.dns.tsig import Signed, Signer
from dnsreg.dns.wire import (
    AA,
    HEADER,
    QR,
    TCP_LIMIT,
    Malformed,
    Query,
    Rcode,
    decode_query,
    encode_reply,
)
from dnsreg.dns.zones import StaticZones

# Below 16 KiB every compression pointer of a message fits (RFC 1035 §4.1.4: 14 bits),
# and a slow secondary gets data early; BIND and NSD use similar sizes.
MESSAGE_LIMIT = 16_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


class Transfers:
    def __init__(
        self,
        journal: Journal,
        static: Callable[[], StaticZones],
        allow: Sequence[Network] = (),
        *,
        signer: Signer | None = None,
        message_limit: int = MESSAGE_LIMIT,
    ) -> None:
        self.journal = journal
        self.static = static
        self.allow = tuple(allow)
        self.signer = signer
        self.message_limit = message_limit
        self.refused = 0
        self.served = {"axfr": 0, "ixfr": 0, "ixfr-as-axfr": 0, "up-to-date": 0}

    @property
    def origin(self) -> Name:
        return self.journal.settings.origin

    def allowed(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.allow)

    def tcp(self, data: bytes, peer: str) -> list[bytes] | None:
        """The messages answering a transfer request; None: not one (answer it normally)."""
        try:
            query = decode_query(data)
        except Malformed:
            return None  # the normal path knows every error reply
        if query.qtype not in (AXFR, IXFR):
            return None
        signed: Signed | None = None
        if query.signed:
            if self.signer is None:
                return None  # the normal path answers NOTAUTH/BADKEY
            try:
                signed = self.signer.verify(data)
            except Malformed as bad:
                self.refused += 1
                return [bad.reply] if bad.reply is not None else None
        # RFC 8945 §5.3: a signed request gets signed replies, refusals included.
        by_key = signed is not None and signed.key.authorize("transfer", None)
        messages = self._messages(data, query, by_key or self.allowed(peer))
        if signed is not None and self.signer is not None:
            return self.signer.sign(signed, messages)
        return messages

    def _messages(self, data: bytes, query: Query, allowed: bool) -> list[bytes]:
        limit = TCP_LIMIT
        if query.qname != self.origin:
            # We transfer the dynamic zone only (static zones are files: copy them).
            self.refused += 1
            return [encode_reply(query, Reply(Kind.REFUSED, authoritative=False), limit)]
        if not allowed:
            self.refused += 1
            return [encode_reply(query, Reply(Kind.REFUSED, authoritative=False), limit)]
        journal = self.journal
        journal.observe(self.static())  # one revision, exactly as DNS serves it now
        current = journal.soa
        if query.qtype == IXFR:
            client = _client_serial(data)
            if client is None:
                return [encode_reply(query, Reply(Kind.REFUSED, authoritative=False), limit)]
            if not serial_lt(client, _serial(current)):
                # RFC 1995 §2: the client is current (or ahead): the SOA alone.
                self.served["up-to-date"] += 1
                return self.pack(query, [current])
            diffs = journal.since(client)
            if diffs is not None:
                self.served["ixfr"] += 1
                records: list[Record] = [current]
                for diff in diffs:
                    records.append(journal.soa_at(diff.from_revision))
                    records.extend(diff.deleted)
                    records.append(journal.soa_at(diff.to_revision))
                    records.extend(diff.added)
                records.append(current)
                return self.pack(query, records)
            self.served["ixfr-as-axfr"] += 1  # RFC 1995 §4: the full zone, AXFR-style
        else:
            self.served["axfr"] += 1
        zone = sorted(journal.records(), key=_order)
        return self.pack(query, [current, *zone, current])

    def pack(self, query: Query, records: Sequence[Record]) -> list[bytes]:
        """Records into messages below the limit; the question only in the first (RFC 5936 §2.2)."""
        flags = QR | AA
        messages: list[bytes] = []
        first = True
        w = self._writer(query, first)
        count = 0
        for record in records:
            mark = len(w.buf)
            w.record(record)
            if len(w.buf) > self.message_limit and count:
                del w.buf[mark:]
                messages.append(self._finish(w, query, flags, first, count))
                first = False
                w = self._writer(query, first)
                w.record(record)
                count = 0
            count += 1
        messages.append(self._finish(w, query, flags, first, count))
        return messages

    @staticmethod
    def _writer(query: Query, first: bool) -> Writer:
        w = Writer(HEADER.pack(0, 0, 0, 0, 0, 0) + (query.question if first else b""))
        if first:
            at = HEADER.size
            for i in range(len(query.qname)):
                w.owner_offsets.setdefault(query.qname[i:], at)
                at += 1 + len(query.qname[i])
        return w

    @staticmethod
    def _finish(w: Writer, query: Query, flags: int, first: bool, count: int) -> bytes:
        HEADER.pack_into(w.buf, 0, query.id, flags | Rcode.NOERROR, int(first), count, 0, 0)
        return bytes(w.buf)


def _serial(record: Record) -> int:
    assert isinstance(record.rdata, SOAData)
    return record.rdata.serial


def _client_serial(data: bytes) -> int | None:
    """The serial of the SOA in an IXFR query's authority section (RFC 1995 §3)."""
    try:
        msg = dns.message.from_wire(data, ignore_trailing=True, keyring=False)
    except (dns.exception.DNSException, ValueError):
        return None
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(rrset[0].serial)
    return None


def _order(record: Record) -> tuple[tuple[str, ...], int, str]:
    return (tuple(reversed(record.owner)), record.rtype, record.rdata.text())
