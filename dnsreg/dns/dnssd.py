"""DNS-SD (RFC 6763) names of the dynamic zone and the records they hold. Pure.

Unicast DNS-SD browsing over the registry, as SPEC §1 lists it:

============================================ =========================================
``_services._dns-sd._udp.Z`` PTR              every ``_<svc>._<proto>.Z`` with a served
                                              instance (RFC 6763 §9)
``_<svc>._<proto>.Z`` PTR                     ``<id>._<svc>._<proto>.Z`` per served
                                              instance (§4); SRV stays as RFC 2782 says
``_<tag>._sub._<svc>._<proto>.Z`` PTR         the served instances carrying ``tag`` (§7.1)
``<id>._<svc>._<proto>.Z`` SRV, TXT           SRV target ``<id>.<svc>.Z``; TXT always
                                              present, one empty string without meta (§6.1)
``b._dns-sd._udp.Z``, ``lb._dns-sd._udp.Z``   PTR → ``Z``, the browsing domain (§11)
============================================ =========================================

The answer builder (:mod:`dnsreg.dns.answers`) calls :func:`lookup` for every
name whose last relative label is ``_tcp`` or ``_udp`` and turns the result
into a reply, so health, maintenance, panic mode and the answer cache apply
exactly as for the other names. Additional records follow RFC 6763 §12.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dnsreg.core.model import Instance
from dnsreg.core.names import Name
from dnsreg.core.registry import Registry
from dnsreg.dns.records import AAAA, PTR, SRV, TXT, A, Address, Record, SRVData, Target, TXTData
from dnsreg.dns.service_answers import Material

PROTOS = ("_tcp", "_udp")
DNS_SD = ("_dns-sd", "_udp")
SERVICES = ("_services", *DNS_SD)
BROWSE_DOMAINS = ("b", "lb")  # RFC 6763 §11: browse, and "legacy browse"
SUB = "_sub"


# Material of the served instances of (service, protocol, tag or None): the answer
# builder's MaterialCache, so browsing costs what the reply carries, not the service.
ServedOf = Callable[[str, str, str | None], Material]
# The smallest PTR of a browse answer: owner pointer, type/class/TTL/RDLENGTH, and an
# instance name of at least one octet of id plus a pointer to ``_svc._proto``.
MIN_PTR = 2 + 10 + 2 + 2
# The smallest additional records of one browsed instance (§12.1): SRV (owner pointer
# and one-octet id, fixed fields, a target of a one-octet id and a pointer), TXT with
# one empty string (owner pointer), the address (owner pointer).
MIN_EXTRA = (4 + 10 + 6 + 4) + (2 + 10 + 1) + (2 + 10 + 4)


@dataclass(frozen=True, slots=True)
class SdAnswer:
    """What a DNS-SD name holds right now.

    ``rrsets``: the records at the name by type (empty: the name exists but has
    no record to serve, a NODATA). ``srv``: for ``_<svc>._<proto>`` the material
    its SRV set is drawn from, so the builder answers SRV the way it always has
    (weighted shuffle). ``panic``: services served in panic mode. ``service``:
    the one service the content depends on (None: the whole registry);
    ``fixed``: it depends on nothing but the zone's name. ``available``: records
    the name holds, when the rrsets carry only the first of them.
    """

    rrsets: Mapping[int, tuple[Record, ...]]
    additional: tuple[Record, ...] = ()
    service: str | None = None
    fixed: bool = False
    srv: tuple[str, Material] | None = None
    panic: tuple[str, ...] = field(default=())
    available: int = 0
    # Whole-zone lookups only (answers.Question.whole): per type, the instance id of
    # each record; and each RRset's (type, TTL).
    sources: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    ttls: tuple[tuple[int, int], ...] = ()


def type_name(service: str, proto: str, origin: Name) -> Name:
    return (f"_{service}", f"_{proto}", *origin)


def instance_name(instance: Instance, origin: Name) -> Name:
    reg = instance.reg
    return (reg.id, f"_{reg.service}", f"_{reg.proto}", *origin)


def host_name(instance: Instance, origin: Name) -> Name:
    return (instance.reg.id, instance.reg.service, *origin)


def txt_data(instance: Instance) -> TXTData:
    """RFC 6763 §6.3 ``key=value`` strings; §6.1: a single empty string when there is none."""
    strings = tuple(f"{k}={v}".encode()[:255] for k, v in instance.reg.meta)
    return TXTData(strings or (b"",))


def _service_label(label: str) -> str | None:
    return label[1:] if label.startswith("_") and len(label) > 1 else None


def lookup(
    rel: Name,
    registry: Registry,
    origin: Name,
    served_of: ServedOf,
    room: int,
    *,
    srv_only: bool = False,
    whole: bool = False,
    members: frozenset[str] | None = None,
) -> SdAnswer | None:
    """The DNS-SD content of ``rel`` (relative to ``origin``); None: no such DNS-SD name.

    ``room``: octets the answer may fill; a browse name carries no more PTRs than fit.
    ``srv_only``: the question is SRV; ``_<svc>._<proto>`` then needs only its material.
    ``whole``: a zone transfer's view: a browse name holds every served instance (of
    ``members`` only, when given), with each record's source.
    """
    if rel == SERVICES:
        return _services(registry, origin, served_of)
    if len(rel) == 3 and rel[1:] == DNS_SD and rel[0] in BROWSE_DOMAINS:
        owner = (*rel, *origin)
        return SdAnswer({PTR: (Record(owner, PTR, 3600, Target(origin)),)}, fixed=True)
    if rel == DNS_SD:
        return SdAnswer({}, fixed=True)  # empty non-terminal above the names above
    if len(rel) < 2 or rel[-1] not in PROTOS:
        return None
    service = _service_label(rel[-2])
    proto = rel[-1][1:]
    if service is None or not registry.has_proto(service, proto):
        return None
    owner = (*rel, *origin)
    if len(rel) == 2:
        material = served_of(service, proto, None)
        if srv_only:
            return SdAnswer({}, service=service, srv=(service, material))
        if whole:
            return _whole_browse(owner, service, material, origin, members, srv=True)
        return _browse(owner, service, material, origin, room, srv=True)
    if len(rel) == 3 and rel[0] == SUB:
        if registry.has_proto(service, proto, tagged=True):
            return SdAnswer({}, service=service)  # empty non-terminal above the subtypes
        return None
    if len(rel) == 3:
        found = registry.get(service, rel[0])
        if found is None or found.reg.proto != proto:
            return None
        material = served_of(service, proto, None)
        rrsets: dict[int, tuple[Record, ...]] = {}
        additional: list[Record] = []
        instance = material.served.get(found.reg.id)
        if instance is not None:
            rrsets[SRV] = (_srv(owner, instance, origin),)
            rrsets[TXT] = (Record(owner, TXT, instance.reg.dns_ttl, txt_data(instance)),)
            additional.extend(_addresses(instance, origin))  # RFC 6763 §12.2
        panic = (service,) if material.panic else ()
        return SdAnswer(rrsets, tuple(additional), service=service, panic=panic)
    if len(rel) == 4 and rel[1] == SUB:
        tag = _service_label(rel[0])
        if tag is None or not registry.has_tag(service, tag):
            return None
        material = served_of(service, proto, tag)
        if not material.count and not any(
            i.reg.proto == proto for i in registry.tagged(service, (tag,))
        ):
            return None
        if whole:
            return _whole_browse(owner, service, material, origin, members, srv=False)
        return _browse(owner, service, material, origin, room, srv=False)
    return None


def _browse(
    owner: Name, service: str, material: Material, origin: Name, room: int, *, srv: bool
) -> SdAnswer:
    """PTR to each served instance; its SRV, TXT and address go in additional (§12.1).

    In id order, and only as many as ``room`` could hold (SPEC §2 "Answers are
    bounded"): the ids come sorted from the material, so this costs the answer.
    """
    panic = (service,) if material.panic else ()
    if not material.count:
        return SdAnswer({}, service=service, panic=panic)
    # Built once per revision and size: a miss of the answer cache (another EDNS size,
    # the other transport) encodes what was built, it does not build it again.
    key = ("browse", owner, room, srv)
    found = material.derived.get(key)
    if isinstance(found, SdAnswer):
        return found
    pool = material.pool(SRV)
    shortest_id = pool.min_rr - pool.base_rr
    instances = material.first_by_id(room // (MIN_PTR - 1 + shortest_id) + 1)
    # RFC 2181 §5.2: one TTL per RRset, the shortest of its members' (of all, not just these).
    ttl = pool.ttl
    ptrs = tuple(Record(owner, PTR, ttl, Target(instance_name(i, origin))) for i in instances)
    rrsets: dict[int, tuple[Record, ...]] = {PTR: ptrs}
    if srv:
        rrsets[SRV] = tuple(
            Record(owner, SRV, ttl, _srv(owner, i, origin).rdata) for i in instances
        )
    # §12.1's additional records are optional: only for the instances whose records
    # could still fit after the PTRs (none when the PTRs alone fill the reply).
    left = room - sum(MIN_PTR - 1 + len(i.reg.id) for i in instances)
    with_extra = instances[: max(0, left) // MIN_EXTRA]
    additional: list[Record] = []
    for i in with_extra:
        name = instance_name(i, origin)
        additional.append(_srv(name, i, origin))
        additional.append(Record(name, TXT, i.reg.dns_ttl, txt_data(i)))
    for i in with_extra:
        additional.extend(_addresses(i, origin))
    built = SdAnswer(
        rrsets,
        tuple(additional),
        service=service,
        srv=(service, material) if srv else None,
        panic=panic,
        available=material.count,
    )
    material.derived[key] = built
    return built


def _whole_browse(
    owner: Name,
    service: str,
    material: Material,
    origin: Name,
    members: frozenset[str] | None,
    *,
    srv: bool,
) -> SdAnswer:
    """A browse name as a zone transfer holds it: a PTR (and SRV) per served instance."""
    panic = (service,) if material.panic else ()
    if not material.count:
        return SdAnswer({}, service=service, panic=panic)
    if members is None:
        instances = material.first_by_id(material.count)
    else:
        served = material.served
        instances = [served[i] for i in sorted(members) if i in served]
    ttl = material.pool(SRV).ttl  # RFC 2181 §5.2, as _browse
    ids = tuple(i.reg.id for i in instances)
    rrsets: dict[int, tuple[Record, ...]] = {
        PTR: tuple(Record(owner, PTR, ttl, Target(instance_name(i, origin))) for i in instances)
    }
    sources = {PTR: ids}
    ttls = [(PTR, ttl)]
    if srv:
        rrsets[SRV] = tuple(
            Record(owner, SRV, ttl, _srv(owner, i, origin).rdata) for i in instances
        )
        sources[SRV] = ids
        ttls.append((SRV, ttl))
    return SdAnswer(
        rrsets, service=service, panic=panic, available=len(instances),
        sources=sources, ttls=tuple(ttls),
    )  # fmt: skip


def _services(registry: Registry, origin: Name, served_of: ServedOf) -> SdAnswer:
    """RFC 6763 §9: one PTR per service type that has a served instance."""
    owner = (*SERVICES, *origin)
    targets: list[tuple[Name, int]] = []
    panic: list[str] = []
    for service in sorted(registry.services()):
        in_panic = False
        for proto in registry.protos(service):
            material = served_of(service, proto, None)
            in_panic = in_panic or material.panic
            if material.count:
                targets.append((type_name(service, proto, origin), material.pool(SRV).ttl))
        if in_panic:
            panic.append(service)
    if not targets:
        return SdAnswer({}, panic=tuple(panic))
    ttl = min(t for _, t in targets)
    ptrs = tuple(Record(owner, PTR, ttl, Target(name)) for name, _ in targets)
    return SdAnswer({PTR: ptrs}, panic=tuple(panic))


def _srv(owner: Name, instance: Instance, origin: Name) -> Record:
    reg = instance.reg
    data = SRVData(reg.priority, reg.weight, reg.port, host_name(instance, origin))
    return Record(owner, SRV, reg.dns_ttl, data)


def _addresses(instance: Instance, origin: Name) -> Iterable[Record]:
    reg = instance.reg
    rtype = A if reg.address.version == 4 else AAAA
    return (Record(host_name(instance, origin), rtype, reg.dns_ttl, Address(reg.address)),)
