"""Outgoing zone transfers: AXFR (RFC 5936) and IXFR (RFC 1995) of the dynamic zone. Pure.

Only over TCP (RFC 5936 §4.2; an IXFR over UDP gets the current SOA from the
answer builder, RFC 1995 §2). Who may transfer: a client whose address is in
``allow_transfer``, or one whose query is signed with a TSIG key holding the
``transfer`` right (see :mod:`dnsreg.dns.tsig`). Everyone else: REFUSED
(RFC 5936 §2.2.1 lets a server refuse).

The reply is a sequence of messages, each below :data:`MESSAGE_LIMIT` so a
large zone streams instead of failing (RFC 5936 §2.2): the TCP listener frames
and writes them in order. A transfer of more than :data:`SLICE` records is a
:class:`TransferStream`: the records are taken from the journal at once (a
snapshot of one revision, copied at C speed), then packed (and TSIG-signed) a
slice at a time, the listener writing each slice before asking for the next,
so a zone of 400 000 records does not hold the event loop for seconds.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype

from dnsreg.core.names import Name
from dnsreg.dns.answers import Kind, Reply
from dnsreg.dns.records import AXFR, IXFR, Record, SOAData, Writer
from dnsreg.dns.transfer import SNAPSHOT_STEP, Journal, serial_lt
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
# Records packed per slice of a streamed transfer (a few ms of CPU).
SLICE = 2048
# Zones up to this many records go out in name order (what an operator reads with
# dig); larger ones in the journal's order, grouped by name: sorting 400 000 records
# would cost a second, and RFC 5936 asks for no order.
SORT_LIMIT = 20_000

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

    def tcp(self, data: bytes, peer: str) -> list[bytes] | TransferStream | None:
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
        found = self._content(data, query, by_key or self.allowed(peer))
        signer = self.signer if signed is not None else None
        if isinstance(found, Reply):  # one message: a refusal
            messages = [encode_reply(query, found, TCP_LIMIT)]
        elif isinstance(found, _Copy) or len(found) > SLICE:
            sign = signer.stream(signed).sign if signer is not None and signed else None
            return TransferStream(self, query, found, sign)
        else:
            messages = self.pack(query, found)
        if signer is not None and signed is not None:
            return signer.sign(signed, messages)
        return messages

    def _content(self, data: bytes, query: Query, allowed: bool) -> Reply | list[Record] | _Copy:
        """A refusal, or the records to send (SOA first and last), at one revision."""
        refused = Reply(Kind.REFUSED, authoritative=False)
        if query.qname != self.origin:
            # We transfer the dynamic zone only (static zones are files: copy them).
            self.refused += 1
            return refused
        if not allowed:
            self.refused += 1
            return refused
        journal = self.journal
        # One revision, exactly as DNS serves it now (unless another transfer is copying
        # the zone: then the revision that one copies).
        journal.observe(self.static())
        current = journal.soa
        if query.qtype == IXFR:
            client = _client_serial(data)
            if client is None:
                return refused
            if not serial_lt(client, _serial(current)):
                # RFC 1995 §2: the client is current (or ahead): the SOA alone.
                self.served["up-to-date"] += 1
                return [current]
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
                return records
            self.served["ixfr-as-axfr"] += 1  # RFC 1995 §4: the full zone, AXFR-style
        else:
            self.served["axfr"] += 1
        steps = journal.snapshot()
        zone = next(steps)
        if len(zone) < SNAPSHOT_STEP:  # the whole zone in one step
            steps.close()
            if len(zone) <= SORT_LIMIT:
                zone.sort(key=_order)
            return [current, *zone, current]
        return _Copy(current, zone, steps)

    def pack(self, query: Query, records: Sequence[Record]) -> list[bytes]:
        """Records into messages below the limit; the question only in the first (RFC 5936 §2.2)."""
        packer = _Packer(self, query)
        out = packer.add(records)
        out.append(packer.finish())
        return out

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


class _Packer:
    """Records into messages below the limit, as they come (RFC 5936 §2.2)."""

    def __init__(self, transfers: Transfers, query: Query) -> None:
        self.transfers = transfers
        self.query = query
        self.first = True
        self.w = Transfers._writer(query, True)
        self.count = 0

    def add(self, records: Iterable[Record]) -> list[bytes]:
        """Pack ``records``; the messages that filled up on the way."""
        out: list[bytes] = []
        limit = self.transfers.message_limit
        query = self.query
        w = self.w
        for record in records:
            mark = len(w.buf)
            w.record(record)
            if len(w.buf) > limit and self.count:
                del w.buf[mark:]
                out.append(Transfers._finish(w, query, QR | AA, self.first, self.count))
                self.first = False
                w = self.w = Transfers._writer(query, False)
                w.record(record)
                self.count = 0
            self.count += 1
        return out

    def finish(self) -> bytes:
        return Transfers._finish(self.w, self.query, QR | AA, self.first, self.count)


@dataclass(slots=True)
class _Copy:
    """A whole zone being copied from the journal a step at a time, SOA first and last."""

    soa: Record
    first: list[Record]
    steps: Generator[list[Record], None, None]


class TransferStream:
    """A large transfer's messages, packed (and signed) one slice of records at a time.

    The TCP listener calls :meth:`next_batch` until :attr:`done`, writing each
    batch and yielding to other work in between. The records are one revision:
    a whole zone is copied from the journal a step per batch (it changes nothing
    meanwhile, a few turns of the loop), then packed from the copy, so writes
    that land during a long transfer go in the next one.
    """

    def __init__(
        self,
        transfers: Transfers,
        query: Query,
        records: list[Record] | _Copy,
        sign: Callable[[bytes], bytes] | None,
        slice_size: int = SLICE,
    ) -> None:
        self.sign = sign
        self.slice_size = slice_size
        self._packer = _Packer(transfers, query)
        self._copy: _Copy | None = None
        if isinstance(records, _Copy):
            self._copy = records
            self._parts: deque[list[Record]] = deque([[records.soa], records.first])
        else:
            self._parts = deque([records])
        self._at = 0
        self.done = False

    def next_batch(self) -> list[bytes]:
        """The next messages (none when a step packed too little to fill one)."""
        copy = self._copy
        if copy is not None:  # copy on: the journal is held still until it is done
            more = next(copy.steps, None)
            if more is None:
                self._parts.append([copy.soa])
                self._copy = None
            else:
                self._parts.append(more)
        out: list[bytes] = []
        left = self.slice_size
        parts = self._parts
        while left > 0 and parts:
            records = parts[0]
            chunk = records[self._at : self._at + left]
            out.extend(self._packer.add(chunk))
            left -= len(chunk)
            self._at += len(chunk)
            if self._at >= len(records):
                parts.popleft()
                self._at = 0
        if not parts and self._copy is None:
            out.append(self._packer.finish())
            self.done = True
        if self.sign is not None:
            out = [self.sign(wire) for wire in out]
        return out

    def close(self) -> None:
        """Abandoned (the client went): the journal is released."""
        if self._copy is not None:
            self._copy.steps.close()
            self._copy = None
        self._parts.clear()
        self.done = True
