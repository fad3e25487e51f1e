"""Static zones: RFC 1035 master files from the zones directory, parsed by dnspython.

Each ``*.zone`` file holds one zone. Its origin is the file's leading
``$ORIGIN`` when it starts with one, otherwise the file name without
``.zone`` (``example.com.zone`` → ``example.com.``). ``$TTL``, ``$INCLUDE``
(relative to the zones directory, as BIND resolves it against its working
directory) and relative names everywhere, RDATA included, are dnspython's.

A file for the dynamic zone itself adds static names beside the registered
ones; it may not define the apex SOA/NS or ``ns.<zone>``, which the server
generates, and no service may later shadow one of its names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.zone
import dns.zonefile

from dnsreg.core.errors import ZoneError
from dnsreg.core.names import Name, is_subdomain, relative, to_text
from dnsreg.dns.records import (
    AAAA,
    CNAME,
    DNAME,
    MX,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    A,
    Address,
    MXData,
    Opaque,
    RData,
    Record,
    SOAData,
    SRVData,
    Target,
    TXTData,
)

RRsets = Mapping[int, tuple[Record, ...]]


@dataclass(frozen=True, slots=True)
class StaticZone:
    origin: Name
    source: str
    nodes: Mapping[Name, RRsets]
    # Every owner name plus its ancestors up to the origin: the empty
    # non-terminals that exist only because something lies below them.
    names: frozenset[Name]
    soa: Record | None

    def rrsets(self, name: Name) -> RRsets:
        return self.nodes.get(name, {})


@dataclass(frozen=True, slots=True)
class StaticZones:
    zones: Mapping[Name, StaticZone] = field(default_factory=dict)

    def find(self, qname: Name) -> StaticZone | None:
        """The zone with the longest origin that holds ``qname``."""
        for cut in range(len(qname) + 1):
            zone = self.zones.get(qname[cut:])
            if zone is not None:
                return zone
        return None

    def clash_for_service(self, dynamic_origin: Name, service: str) -> str | None:
        """A static name a service ``service`` would shadow, or None."""
        zone = self.zones.get(dynamic_origin)
        if zone is None:
            return None
        owners = (
            (service, *dynamic_origin),
            (f"_{service}", "_tcp", *dynamic_origin),
            (f"_{service}", "_udp", *dynamic_origin),
        )
        for name in zone.nodes:
            for owner in owners:
                if is_subdomain(name, owner):
                    return f"{to_text(name)} ({zone.source})"
        return None

    def all_records(self) -> Iterator[Record]:
        for zone in self.zones.values():
            for rrsets in zone.nodes.values():
                for records in rrsets.values():
                    yield from records


def _name(value: dns.name.Name) -> Name:
    # DNS folds ASCII only (RFC 4343 §3); latin-1 maps octets to str losslessly.
    return tuple(label.lower().decode("latin-1") for label in value.labels if label)


def _rdata(rdtype: int, rd: object) -> RData:
    if rdtype in (A, AAAA):
        return Address(ipaddress.ip_address(rd.address))  # type: ignore[attr-defined]
    if rdtype in (NS, CNAME, PTR):
        return Target(_name(rd.target))  # type: ignore[attr-defined]
    if rdtype == DNAME:
        return Target(_name(rd.target), compress=False)  # type: ignore[attr-defined]
    if rdtype == MX:
        return MXData(rd.preference, _name(rd.exchange))  # type: ignore[attr-defined]
    if rdtype == SRV:
        return SRVData(rd.priority, rd.weight, rd.port, _name(rd.target))  # type: ignore[attr-defined]
    if rdtype == TXT:
        return TXTData(tuple(rd.strings))  # type: ignore[attr-defined]
    if rdtype == SOA:
        return SOAData(
            _name(rd.mname),  # type: ignore[attr-defined]
            _name(rd.rname),  # type: ignore[attr-defined]
            rd.serial,  # type: ignore[attr-defined]
            rd.refresh,  # type: ignore[attr-defined]
            rd.retry,  # type: ignore[attr-defined]
            rd.expire,  # type: ignore[attr-defined]
            rd.minimum,  # type: ignore[attr-defined]
        )
    return Opaque(rd.to_wire(), rd.to_text())  # type: ignore[attr-defined]


def _declared_origin(path: Path) -> str | None:
    """The ``$ORIGIN`` a file starts with, if it starts with one."""
    with path.open(encoding="utf-8") as f:
        for raw in f:
            line = raw.split(";", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if parts[0].upper() == "$ORIGIN" and len(parts) >= 2:
                return parts[1] if parts[1].endswith(".") else parts[1] + "."
            return None
    return None


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    # dnspython opens $INCLUDE paths relative to the process's working
    # directory; zone loading is synchronous, so switching briefly is safe.
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class _Reader(dns.zonefile.Reader):
    """dnspython's master-file reader, with error lines that point at the record.

    dnspython reports its tokenizer's line when an error surfaces, and the
    tokenizer has usually read the newline after the bad record by then (it
    counts a newline even when it puts it back), so messages name the line
    below the mistake, in $INCLUDEd files too. Report the line the record
    starts on instead.
    """

    _record_line: int | None = None

    def _rr_line(self) -> None:
        self._record_line = self.tok.line_number
        super()._rr_line()
        self._record_line = None

    def read(self) -> None:
        try:
            super().read()
        except dns.exception.SyntaxError as exc:
            filename, reported = self.tok.where()
            if self._record_line is not None:
                line = self._record_line
            else:  # a directive: only a put-back newline can be counted already
                line = reported - (1 if self.tok.ungotten_char == "\n" else 0)
            prefix = f"{filename}:{reported}: "
            text = str(exc)
            if line == reported or not text.startswith(prefix):
                raise
            fixed = f"{filename}:{line}: {text[len(prefix) :]}"
            raise dns.exception.SyntaxError(fixed) from None  # type: ignore[no-untyped-call]


def _parse(path: Path, origin: dns.name.Name, *, check_origin: bool) -> dns.zone.Zone:
    """What ``dns.zone.from_file`` does, with :class:`_Reader`."""
    zone = dns.zone.Zone(origin, dns.rdataclass.IN, relativize=False)
    with path.open(encoding="utf-8") as f, zone.writer(True) as txn:
        tok = dns.tokenizer.Tokenizer(f, str(path))
        _Reader(tok, dns.rdataclass.IN, txn, allow_include=True).read()
    if check_origin:
        zone.check_origin()
    return zone


def load_zone_file(path: Path, dynamic_origin: Name) -> StaticZone:
    """Parse one master file; raise ZoneError naming the file and line."""
    origin_text = _declared_origin(path) or path.name.removesuffix(".zone") + "."
    try:
        origin = dns.name.from_text(origin_text)
    except dns.exception.DNSException as exc:
        raise ZoneError(f"{path}: bad zone origin {origin_text!r}: {exc}") from exc
    is_dynamic = _name(origin) == dynamic_origin
    path = path.resolve()
    try:
        with _working_directory(path.parent):
            zone = _parse(path, origin, check_origin=not is_dynamic)
    except dns.exception.SyntaxError as exc:
        # dnspython's message already reads "file:line: what".
        raise ZoneError(f"{exc}") from exc
    except (dns.exception.DNSException, OSError, UnicodeDecodeError) as exc:
        raise ZoneError(f"{path}: {exc.__class__.__name__}: {exc}") from exc

    zone_origin = _name(origin)
    nodes: dict[Name, dict[int, tuple[Record, ...]]] = {}
    for owner, node in zone.nodes.items():
        name = _name(owner)
        for rdataset in node.rdatasets:
            rdtype = int(rdataset.rdtype)
            records = tuple(
                Record(name, rdtype, int(rdataset.ttl), _rdata(rdtype, rd)) for rd in rdataset
            )
            if records:
                nodes.setdefault(name, {})[rdtype] = records
    if is_dynamic:
        apex = nodes.get(zone_origin, {})
        for generated in (SOA, NS):
            if generated in apex:
                kind = dns.rdatatype.to_text(dns.rdatatype.RdataType(generated))
                raise ZoneError(
                    f"{path}: the {kind} record of {to_text(zone_origin)} is generated by dnsreg; "
                    "remove it from the file"
                )
        ns_name = ("ns", *zone_origin)
        for name in nodes:
            if is_subdomain(name, ns_name):
                raise ZoneError(f"{path}: {to_text(name)} is the server's own name")
    names: set[Name] = set()
    for name in nodes:
        rel = relative(name, zone_origin)
        for cut in range(len(rel) + 1):
            names.add(name[cut:])
    soa_set = nodes.get(zone_origin, {}).get(SOA)
    return StaticZone(
        origin=zone_origin,
        source=str(path),
        nodes=nodes,
        names=frozenset(names),
        soa=soa_set[0] if soa_set else None,
    )


def load_zones(directory: Path, dynamic_origin: Name) -> StaticZones:
    """Load every ``*.zone`` file in ``directory`` (a missing directory holds none)."""
    if not directory.is_dir():
        return StaticZones()
    zones: dict[Name, StaticZone] = {}
    for path in sorted(directory.glob("*.zone")):
        zone = load_zone_file(path, dynamic_origin)
        other = zones.get(zone.origin)
        if other is not None:
            raise ZoneError(
                f"{path}: zone {to_text(zone.origin)} is already defined by {other.source}"
            )
        zones[zone.origin] = zone
    return StaticZones(zones)


def zones_from_text(text: str, origin: str, dynamic_origin: Name) -> StaticZone:
    """Parse zone text (for tests and tools) exactly as a file would be."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{origin.rstrip('.')}.zone"
        path.write_text(text, encoding="utf-8")
        return load_zone_file(path, dynamic_origin)
