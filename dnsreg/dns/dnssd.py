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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dnsreg.core.model import Instance
from dnsreg.core.names import Name
from dnsreg.core.registry import Registry
from dnsreg.dns.records import AAAA, PTR, SRV, TXT, A, Address, Record, SRVData, Target, TXTData

PROTOS = ("_tcp", "_udp")
DNS_SD = ("_dns-sd", "_udp")
SERVICES = ("_services", *DNS_SD)
BROWSE_DOMAINS = ("b", "lb")  # RFC 6763 §11: browse, and "legacy browse"
SUB = "_sub"


@dataclass(frozen=True, slots=True)
class SdAnswer:
    """What a DNS-SD name holds right now.

    ``rrsets``: the records at the name by type (empty: the name exists but has
    no record to serve, a NODATA). ``srv_pool``: for ``_<svc>._<proto>`` the
    instances its SRV set is drawn from, so the builder can answer SRV the way
    it always has (weighted shuffle). ``panic``: services served in panic mode.
    ``service``: the one service the content depends on (None: the whole
    registry); ``fixed``: it depends on nothing but the zone's name.
    """

    rrsets: Mapping[int, tuple[Record, ...]]
    additional: tuple[Record, ...] = ()
    service: str | None = None
    fixed: bool = False
    srv_pool: tuple[str, tuple[Instance, ...]] | None = None
    panic: tuple[str, ...] = field(default=())


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


def lookup(rel: Name, registry: Registry, origin: Name) -> SdAnswer | None:
    """The DNS-SD content of ``rel`` (relative to ``origin``); None: no such DNS-SD name."""
    if rel == SERVICES:
        return _services(registry, origin)
    if len(rel) == 3 and rel[1:] == DNS_SD and rel[0] in BROWSE_DOMAINS:
        owner = (*rel, *origin)
        return SdAnswer({PTR: (Record(owner, PTR, 3600, Target(origin)),)}, fixed=True)
    if rel == DNS_SD:
        return SdAnswer({}, fixed=True)  # empty non-terminal above the names above
    if len(rel) < 2 or rel[-1] not in PROTOS:
        return None
    service = _service_label(rel[-2])
    if service is None or not registry.has_service(service):
        return None
    proto = rel[-1][1:]
    pool = [i for i in registry.instances(service).values() if i.reg.proto == proto]
    if not pool:
        return None
    owner = (*rel, *origin)
    if len(rel) == 2:
        return _browse(owner, service, pool, registry, origin, with_srv=True)
    if len(rel) == 3 and rel[0] == SUB:
        if any(i.reg.tags for i in pool):
            return SdAnswer({}, service=service)  # empty non-terminal above the subtypes
        return None
    if len(rel) == 3:
        match = [i for i in pool if i.reg.id == rel[0]]
        if not match:
            return None
        served = registry.served(service, match)
        rrsets: dict[int, tuple[Record, ...]] = {}
        additional: list[Record] = []
        for instance in served.instances:
            rrsets[SRV] = (_srv(owner, instance, origin),)
            rrsets[TXT] = (Record(owner, TXT, instance.reg.dns_ttl, txt_data(instance)),)
            additional.extend(_addresses(instance, origin))  # RFC 6763 §12.2
        panic = (service,) if served.panic else ()
        return SdAnswer(rrsets, tuple(additional), service=service, panic=panic)
    if len(rel) == 4 and rel[1] == SUB:
        tag = _service_label(rel[0])
        if tag is None:
            return None
        tagged = [i for i in pool if tag in i.reg.tags]
        if not tagged:
            return None
        return _browse(owner, service, tagged, registry, origin, with_srv=False)
    return None


def _browse(
    owner: Name,
    service: str,
    pool: Sequence[Instance],
    registry: Registry,
    origin: Name,
    *,
    with_srv: bool,
) -> SdAnswer:
    """PTR to each served instance; its SRV, TXT and address go in additional (§12.1)."""
    served = registry.served(service, pool)
    instances = sorted(served.instances, key=lambda i: i.reg.id)
    panic = (service,) if served.panic else ()
    if not instances:
        return SdAnswer({}, service=service, panic=panic)
    # RFC 2181 §5.2: one TTL per RRset, the shortest of its members'.
    ttl = min(i.reg.dns_ttl for i in instances)
    ptrs = tuple(Record(owner, PTR, ttl, Target(instance_name(i, origin))) for i in instances)
    rrsets: dict[int, tuple[Record, ...]] = {PTR: ptrs}
    if with_srv:
        rrsets[SRV] = tuple(
            Record(owner, SRV, ttl, _srv(owner, i, origin).rdata) for i in instances
        )
    additional: list[Record] = []
    for i in instances:
        name = instance_name(i, origin)
        additional.append(_srv(name, i, origin))
        additional.append(Record(name, TXT, i.reg.dns_ttl, txt_data(i)))
    for i in instances:
        additional.extend(_addresses(i, origin))
    return SdAnswer(
        rrsets,
        tuple(additional),
        service=service,
        srv_pool=(service, tuple(instances)) if with_srv else None,
        panic=panic,
    )


def _services(registry: Registry, origin: Name) -> SdAnswer:
    """RFC 6763 §9: one PTR per service type that has a served instance."""
    owner = (*SERVICES, *origin)
    targets: list[tuple[Name, int]] = []
    panic: list[str] = []
    for service in sorted(registry.services()):
        served = registry.served(service)
        if served.panic:
            panic.append(service)
        protos: dict[str, int] = {}
        for i in served.instances:
            protos[i.reg.proto] = min(protos.get(i.reg.proto, i.reg.dns_ttl), i.reg.dns_ttl)
        targets.extend((type_name(service, p, origin), t) for p, t in sorted(protos.items()))
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
