"""DNS UPDATE (RFC 2136) as registrations: from an update message to a plan. Pure.

An update is read against what DNS serves right now (the answer builder over
the registry and the zone files), never against a copy of the data:

* prerequisites (RFC 2136 §2.4, §3.2) ask the answer builder whether a name
  owns records, or an RRset exists (with exactly the given records);
* the update section (§2.5, §3.4) is read per instance name,
  ``<id>.<svc>.Z`` or ``<id>._<svc>._<proto>.Z`` (SPEC §2): SRV gives port,
  priority, weight (its TTL the ``dns_ttl``); A/AAAA at the instance name, or
  at the SRV target when that is in the zone, the address; TXT
  ``key=value`` strings the meta. Deleting the name, its SRV or its address
  deregisters; deleting its TXT clears the meta;
* the lease is the RFC 9664 Update Lease EDNS option, clamped to 1 s–24 h,
  else the default ``ttl``.

The result is a :class:`Plan`, a list of writes the store applies all or none,
or a :class:`~dnsreg.core.errors.DnsregError` that ``wire.rcode_for_error``
turns into the rcode the RFC prescribes. The caller verifies TSIG, authorises
each service of the plan and writes it (``dns/updater``).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field, replace

import dns.edns
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dnsreg.core.admission import AdmissionPolicy, check_address
from dnsreg.core.errors import InvalidInput, NotInZone, PrerequisiteFailed, Refused
from dnsreg.core.model import (
    DEFAULT_DNS_TTL,
    DEFAULT_LEASE_TTL,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    Deregistration,
    IPAddress,
    Protocol,
    Registration,
    Write,
)
from dnsreg.core.names import Name, check_label, is_subdomain, relative, to_text
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Kind, Question, Settings, answer
from dnsreg.dns.records import Record
from dnsreg.dns.zones import StaticZones

LEASE_OPTION = 2  # RFC 9664 §4: the Update Lease EDNS option code
MAX_META_STRINGS = 64
# Types an update may not add (RFC 2136 §3.4.1.2: meta-types are FORMERR).
_META_TYPES = frozenset({dns.rdatatype.ANY, dns.rdatatype.AXFR, dns.rdatatype.IXFR,
                         dns.rdatatype.MAILA, dns.rdatatype.MAILB, dns.rdatatype.OPT,
                         dns.rdatatype.TSIG})  # fmt: skip
_ADDRESS = (dns.rdatatype.A, dns.rdatatype.AAAA)
_INSTANCE_TYPES = frozenset({dns.rdatatype.SRV, dns.rdatatype.TXT, *_ADDRESS})


@dataclass(frozen=True, slots=True)
class Lease:
    """RFC 9664 §4: the lease asked for (LEASE, and KEY-LEASE when 8 octets came)."""

    lease: int
    key_lease: int | None = None

    def option(self) -> dns.edns.GenericOption:
        data = struct.pack("!I", self.lease)
        if self.key_lease is not None:
            data += struct.pack("!I", self.key_lease)
        return dns.edns.GenericOption(dns.edns.OptionType.make(LEASE_OPTION), data)


@dataclass(frozen=True, slots=True)
class Plan:
    writes: tuple[Write, ...]
    #: The lease granted, to echo in the reply (None: the request asked for none).
    granted: Lease | None = None

    @property
    def services(self) -> frozenset[str]:
        return frozenset(w.service for w in self.writes)


@dataclass(frozen=True, slots=True)
class View:
    """What an update is judged against: the data DNS answers from, and the rules."""

    registry: Registry
    static: StaticZones
    settings: Settings
    policy: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    default_ttl: float = DEFAULT_LEASE_TTL


def read_lease(msg: dns.message.Message) -> Lease | None:
    """The Update Lease option of ``msg``, clamped to what a registration may hold."""
    for option in msg.options:
        if option.otype != LEASE_OPTION:
            continue
        data = option.to_wire() or b""
        if len(data) not in (4, 8):
            raise InvalidInput("the Update Lease option must be 4 or 8 octets (RFC 9664 §4)")
        lease = _clamp(struct.unpack_from("!I", data)[0])
        key_lease = _clamp(struct.unpack_from("!I", data, 4)[0]) if len(data) == 8 else None
        return Lease(lease, key_lease)
    return None


def _clamp(seconds: int) -> int:
    # RFC 9664 §4.3: the server may grant a lease other than the one asked for.
    return int(min(MAX_LEASE_TTL, max(MIN_LEASE_TTL, seconds)))


def plan(msg: dns.message.Message, view: View) -> Plan:
    """The writes ``msg`` asks for, or the DnsregError its rcode comes from."""
    origin = dns.name.from_text(to_text(view.settings.origin))
    if len(msg.question) != 1:  # the zone section (RFC 2136 §3.1.1)
        raise InvalidInput("an update names exactly one zone (RFC 2136 §2.3)")
    zone = msg.question[0]
    if zone.rdtype != dns.rdatatype.SOA or zone.rdclass != dns.rdataclass.IN:
        raise InvalidInput("the zone section must be one SOA question of class IN")
    if zone.name != origin:
        raise NotInZone(
            f"this server takes updates for {origin}, not {zone.name}", detail="NOTAUTH"
        )
    for rrset in msg.answer:  # the prerequisite section
        _check_prerequisite(rrset, view, origin)
    lease = read_lease(msg)
    ttl = float(lease.lease) if lease is not None else view.default_ttl
    drafts = _read_updates(msg.authority, view, origin)
    writes: list[Write] = []
    for draft in drafts.values():
        write = draft.result(ttl, view.policy)
        if write is not None:
            writes.append(write)
    return Plan(tuple(writes), lease)


# ---------------------------------------------------------------- prerequisites
def served(view: View, name: Name, rdtype: int) -> list[Record]:
    """The records DNS serves at ``name`` for ``rdtype`` (ANY: all), owned by ``name``."""
    reply = answer(
        Question(name, rdtype, tcp=True),
        view.registry,
        view.static,
        view.settings,
        random.Random(0),
    )
    if reply.kind is not Kind.ANSWER:
        return []
    wanted = (rdtype,) if rdtype != dns.rdatatype.ANY else ()
    return [r for r in reply.answer if r.owner == name and (not wanted or r.rtype in wanted)]


def _check_prerequisite(rrset: dns.rrset.RRset, view: View, origin: dns.name.Name) -> None:
    """RFC 2136 §3.2: each prerequisite, or the rcode its failure calls for."""
    if rrset.ttl != 0:
        raise InvalidInput(f"prerequisite {rrset.name}: TTL must be 0 (RFC 2136 §2.4)")
    name = _in_zone(rrset.name, origin)
    rdtype = rrset.rdtype
    text = f"{rrset.name} {dns.rdatatype.to_text(rdtype)}"
    if rrset.deleting == dns.rdataclass.ANY:
        if rdtype == dns.rdatatype.ANY:  # §2.4.4 "name is in use"
            if not served(view, name, rdtype):
                raise PrerequisiteFailed(f"{rrset.name} does not exist", detail="NXDOMAIN")
        elif not served(view, name, rdtype):  # §2.4.1 "RRset exists (value independent)"
            raise PrerequisiteFailed(f"no {text} RRset", detail="NXRRSET")
    elif rrset.deleting == dns.rdataclass.NONE:
        if rdtype == dns.rdatatype.ANY:  # §2.4.5 "name is not in use"
            if served(view, name, rdtype):
                raise PrerequisiteFailed(f"{rrset.name} exists", detail="YXDOMAIN")
        elif served(view, name, rdtype):  # §2.4.3 "RRset does not exist"
            raise PrerequisiteFailed(f"the {text} RRset exists", detail="YXRRSET")
    elif rrset.rdclass == dns.rdataclass.IN:  # §2.4.2 "RRset exists (value dependent)"
        have = {_rdata(r) for r in served(view, name, rdtype)}
        if have != set(rrset):
            raise PrerequisiteFailed(f"the {text} RRset differs", detail="NXRRSET")
    else:
        raise InvalidInput(f"prerequisite {rrset.name}: class must be IN, ANY or NONE")


def _rdata(record: Record) -> dns.rdata.Rdata:
    return dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.RdataType.make(record.rtype), record.rdata.text()
    )


def _in_zone(name: dns.name.Name, origin: dns.name.Name) -> Name:
    """``name`` as labels, or NOTZONE (RFC 2136 §3.2.5, §3.4.1.3)."""
    if not name.is_subdomain(origin):
        raise NotInZone(f"{name} is outside the zone {origin}", detail="NOTZONE")
    return tuple(label.decode("latin-1").lower() for label in name.labels[:-1])


# ---------------------------------------------------------------- update section
@dataclass(slots=True)
class _Draft:
    """One instance as the update section leaves it, built from what it holds now."""

    service: str
    id: str
    current: Registration | None
    exists: bool = False
    port: int | None = None
    priority: int = 0
    weight: int = 1
    proto: Protocol = "tcp"
    dns_ttl: int | None = None
    target: Name | None = None
    addresses: list[IPAddress] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    touched: bool = False
    # Records this update added so far: the first A/AAAA (TXT) replaces what the
    # instance had, later ones add to it (an instance has one address, one TXT set).
    added: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, service: str, instance_id: str, current: Registration | None) -> _Draft:
        draft = cls(service, instance_id, current)
        if current is not None:
            draft.exists = True
            draft.port, draft.priority, draft.weight = (
                current.port,
                current.priority,
                current.weight,
            )
            draft.proto, draft.dns_ttl = current.proto, current.dns_ttl
            draft.addresses = [current.address]
            draft.meta = dict(current.meta)
        return draft

    def clear(self) -> None:
        self.exists = False
        self.port = self.target = self.dns_ttl = None
        self.addresses = []
        self.meta = {}
        self.added = set()

    def result(self, ttl: float, policy: AdmissionPolicy) -> Write | None:
        if not self.touched:
            return None
        name = f"instance {self.id}.{self.service}"
        if not self.exists:
            if self.added:  # A/AAAA/TXT for an instance that has (and gets) no SRV
                raise Refused(f"{name}: an instance needs an SRV record (its port)")
            return Deregistration(self.service, self.id) if self.current is not None else None
        if self.port is None or not self.addresses:
            raise Refused(
                f"{name}: an instance needs an SRV record (its port) and an A or AAAA record"
            )
        if len(set(self.addresses)) > 1:
            raise Refused(f"{name}: one address per instance, got {len(set(self.addresses))}")
        try:
            address = check_address(self.addresses[0], policy)
        except InvalidInput as exc:
            raise Refused(f"{name}: {exc.message}") from None
        reg = Registration(
            service=self.service,
            id=self.id,
            address=address,
            port=self.port,
            proto=self.proto,
            meta=tuple(sorted(self.meta.items())),
            weight=self.weight,
            priority=self.priority,
            ttl=ttl,
            dns_ttl=self.dns_ttl if self.dns_ttl is not None else DEFAULT_DNS_TTL,
        )
        if self.current is not None:
            # What DNS cannot say (tags, checks) stays as it was registered.
            reg = replace(reg, tags=self.current.tags, checks=self.current.checks)
        return reg


def _instance_of(name: Name, view: View) -> tuple[str, str, Protocol | None] | None:
    """(service, id, proto) when ``name`` is an instance name of the zone (SPEC §2)."""
    rel = relative(name, view.settings.origin)
    if len(rel) == 2 and not rel[0].startswith("_") and not rel[1].startswith("_"):
        instance_id, service = rel
        proto: Protocol | None = None
    elif len(rel) == 3 and rel[2] in ("_tcp", "_udp") and rel[1].startswith("_"):
        if rel[0].startswith("_"):
            return None
        instance_id, service, proto = rel[0], rel[1][1:], "tcp" if rel[2] == "_tcp" else "udp"
    else:
        return None
    zone = view.static.find(name)
    if zone is not None and len(zone.origin) > len(view.settings.origin):
        return None  # a static sub-zone's name: the zone file owns it
    try:
        return check_label(service, field="service"), check_label(instance_id, field="id"), proto
    except InvalidInput:
        return None


def _read_updates(
    section: list[dns.rrset.RRset], view: View, origin: dns.name.Name
) -> dict[tuple[str, str], _Draft]:
    """RFC 2136 §3.4: the prescan (FORMERR, NOTZONE), then each RR in order."""
    for rrset in section:
        _in_zone(rrset.name, origin)
        if rrset.deleting is None:
            if rrset.rdclass != dns.rdataclass.IN or rrset.rdtype in _META_TYPES:
                raise InvalidInput(f"update {rrset.name}: cannot add a record of this class/type")
        elif rrset.ttl != 0:
            raise InvalidInput(f"update {rrset.name}: a delete must have TTL 0 (RFC 2136 §2.5)")
        elif rrset.deleting == dns.rdataclass.NONE and rrset.rdtype in _META_TYPES:
            raise InvalidInput(f"update {rrset.name}: cannot delete a record of a meta-type")
    drafts: dict[tuple[str, str], _Draft] = {}
    # SRV targets in the zone that are not instance names: their A/AAAA records
    # give the address of the instance whose SRV points there.
    targets: dict[Name, _Draft] = {}

    def draft_for(name: Name) -> _Draft | None:
        found = _instance_of(name, view)
        if found is None:
            return None
        service, instance_id, proto = found
        key = (service, instance_id)
        if key not in drafts:
            current = view.registry.get(service, instance_id)
            drafts[key] = _Draft.of(service, instance_id, current.reg if current else None)
        draft = drafts[key]
        if proto is not None:
            draft.proto = proto
        return draft

    pending: list[tuple[Name, dns.rrset.RRset]] = []
    for rrset in section:
        name = _in_zone(rrset.name, origin)
        draft = draft_for(name)
        if draft is None:
            pending.append((name, rrset))
            continue
        _apply(draft, rrset, targets, view)
    given: dict[tuple[str, str], list[IPAddress]] = {}
    for name, rrset in pending:
        target_of = targets.get(name)
        if target_of is None or rrset.rdtype not in _ADDRESS or rrset.deleting is not None:
            raise Refused(_not_instance(name, view))
        given.setdefault((target_of.service, target_of.id), []).extend(_address(r) for r in rrset)
    for key, addresses in given.items():
        drafts[key].addresses = addresses  # the target's addresses are the instance's
    return drafts


def _apply(draft: _Draft, rrset: dns.rrset.RRset, targets: dict[Name, _Draft], view: View) -> None:
    rdtype = rrset.rdtype
    draft.touched = True
    if rrset.deleting is None:  # §2.5.1 add to an RRset
        if rdtype not in _INSTANCE_TYPES:
            raise Refused(
                f"{rrset.name}: an instance name holds SRV, A, AAAA and TXT records only, "
                f"not {dns.rdatatype.to_text(rdtype)}"
            )
        if rdtype == dns.rdatatype.SRV:
            if len(rrset) != 1:
                raise Refused(f"{rrset.name}: one SRV record per instance")
            srv = rrset[0]
            draft.exists = True
            draft.port, draft.priority = int(srv.port), int(srv.priority)
            draft.weight = max(1, int(srv.weight))  # a registration's weight is 1–65535
            draft.dns_ttl = min(int(rrset.ttl), 86400)
            target = tuple(label.decode("latin-1").lower() for label in srv.target.labels[:-1])
            draft.target = target
            if is_subdomain(target, view.settings.origin) and _instance_of(target, view) is None:
                targets[target] = draft
            if srv.port == 0:
                raise Refused(f"{rrset.name}: SRV port 0 means no service (RFC 2782)")
        elif rdtype in _ADDRESS:
            fresh = [_address(r) for r in rrset]
            draft.addresses = draft.addresses + fresh if _ADDRESS[0] in draft.added else fresh
            draft.added.add(_ADDRESS[0])
        else:
            meta = _meta([s for r in rrset for s in r.strings], rrset.name)
            draft.meta = draft.meta | meta if rdtype in draft.added else meta
        draft.added.add(rdtype)
        return
    if rrset.deleting == dns.rdataclass.ANY:
        # §2.5.2 delete an RRset, §2.5.3 delete all RRsets from a name.
        if rdtype == dns.rdatatype.TXT:
            draft.meta = {}
        elif rdtype in (dns.rdatatype.ANY, dns.rdatatype.SRV, *_ADDRESS):
            draft.clear()
        return
    # §2.5.4 delete an RR from an RRset: only when it is the one the instance has.
    current = {_rdata(r) for r in served(view, _labels(rrset.name), rdtype)}
    if rdtype == dns.rdatatype.TXT:
        for rdata in rrset:
            for s in rdata.strings:
                draft.meta.pop(s.decode(errors="replace").partition("=")[0], None)
    elif rdtype in (dns.rdatatype.SRV, *_ADDRESS) and current & set(rrset):
        draft.clear()


def _labels(name: dns.name.Name) -> Name:
    return tuple(label.decode("latin-1").lower() for label in name.labels[:-1])


def _address(rdata: dns.rdata.Rdata) -> IPAddress:
    return ipaddress.ip_address(str(rdata.address))  # type: ignore[attr-defined]


def _meta(strings: list[bytes], owner: dns.name.Name) -> dict[str, str]:
    """RFC 6763 §6.3: ``key=value`` strings (a bare key has the empty value)."""
    if len(strings) > MAX_META_STRINGS:
        raise Refused(f"{owner}: at most {MAX_META_STRINGS} TXT strings (meta keys)")
    meta: dict[str, str] = {}
    for raw in strings:
        if not raw:
            continue  # RFC 6763 §6.1: the empty string means "no attributes"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"{owner}: TXT strings must be UTF-8 key=value") from None
        key, _, value = text.partition("=")
        if not key or not key.isprintable() or not key.isascii():
            raise Refused(f"{owner}: TXT key {key!r} must be printable ASCII")
        meta[key] = value
    return meta


def _not_instance(name: Name, view: View) -> str:
    origin = view.settings.origin
    rel = relative(name, origin)
    if not rel:
        what = "the zone apex"
    elif len(rel) == 1:
        what = f"service name {to_text(name)}" if rel[0] != view.settings.ns_label else "ns"
    else:
        what = to_text(name)
    return (
        f"updates change instances only: {what} is not an instance name "
        f"(<id>.<service>.{to_text(origin)} or <id>._<service>._<proto>.{to_text(origin)})"
    )
