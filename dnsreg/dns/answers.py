"""The answer builder: one pure function from a question and the data to a reply.

``answer(question, registry, static, settings, rng)`` decides everything a
reply says: its kind (answer, NXDOMAIN, NODATA, REFUSED, referral), its
sections and whether it is authoritative. It reads no clock and no socket;
the shuffle takes its randomness from the ``rng`` passed in. The DNS server
only decodes the query, calls this, and encodes the result (``wire``).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from dnsreg.core.model import Instance
from dnsreg.core.names import Name, is_subdomain, relative
from dnsreg.core.registry import Registry
from dnsreg.dns import dnssd
from dnsreg.dns.material_cache import MaterialCache, PoolKey
from dnsreg.dns.records import (
    AAAA,
    ANY,
    AXFR,
    CNAME,
    IN,
    IXFR,
    NS,
    SOA,
    SRV,
    TXT,
    A,
    Address,
    MXData,
    Record,
    SOAData,
    SRVData,
    Target,
    TXTData,
)
from dnsreg.dns.service_answers import (
    Material,
    draw_limit,
    everyone,
    reply_room,
    tagged_with,
)
from dnsreg.dns.settings import Settings as Settings
from dnsreg.dns.settings import with_alt_domain as with_alt_domain
from dnsreg.dns.zones import StaticZone, StaticZones

MAX_CNAME_CHAIN = 8
WHOLE_ROOM = 2**62  # a zone transfer's "reply": every record
EDE_OTHER = 0  # RFC 8914 §4.1


class Kind(enum.Enum):
    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    REFERRAL = "referral"
    REFUSED = "refused"


class Scope:
    """What an answer depends on, so a cache knows when it goes stale.

    ``STATIC``: only the zone files. ``GLOBAL``: the registry revision (every
    negative answer carries the SOA, whose serial is the revision). Any other
    value is a service name: the answer moves only when that service does.
    """

    STATIC = "\0static"
    GLOBAL = "\0global"


@dataclass(frozen=True, slots=True)
class Question:
    name: Name  # folded to lower case
    qtype: int
    qclass: int = IN
    tcp: bool = False  # ANY gets a minimal reply over UDP only (RFC 8482 §4.1)
    # A zone transfer's view (dns/transfer): every served record, not a reply-sized
    # draw, and no max_answers (RFC 5936 §2.2: the whole zone); with ``members``, only
    # the records of those instances, which is how one change is journaled in O(change).
    whole: bool = False
    members: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    kind: Kind
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True
    ede: tuple[tuple[int, str], ...] = ()
    scope: str = Scope.GLOBAL
    # Answer records the data holds for this question (0: just those in ``answer``).
    # More than the answer carries: the encoder says "N of M" when it sends fewer.
    available: int = 0
    # Whole-zone questions only: the instance each answer record comes from ("" for
    # none), and each instance-made RRset's (type, TTL): a TTL is the smallest of all
    # members' (RFC 2181 §5.2), so one that moved changes every record of the RRset.
    sources: tuple[str, ...] = ()
    ttls: tuple[tuple[int, int], ...] = ()


@dataclass(slots=True)
class _Builder:
    """Sections as they are filled; turned into an immutable Reply at the end."""

    answer: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    ede: list[tuple[int, str]] = field(default_factory=list)
    available: int = 0
    sources: list[str] = field(default_factory=list)
    ttls: list[tuple[int, int]] = field(default_factory=list)


def answer(
    q: Question,
    registry: Registry,
    static: StaticZones,
    settings: Settings,
    rng: random.Random,
    materials: MaterialCache | None = None,
) -> Reply:
    """Build the reply to ``q``. Total: every question gets a reply kind.

    ``materials`` keeps per-service answer material between calls (a memo:
    the reply is the same with or without it); without one it is built afresh.
    """
    if q.qclass not in (IN, ANY):
        return Reply(Kind.REFUSED, authoritative=False, scope=Scope.STATIC)
    if q.qtype == IXFR and not q.tcp and q.name == settings.origin:
        # RFC 1995 §2: an IXFR over UDP is answered with the current SOA alone; the
        # client then transfers over TCP (dns/xfr_out), where access is checked.
        return _Lookup(registry, static, settings, rng, q.tcp, MaterialCache()).resolve(q.name, SOA)
    if q.qtype in (AXFR, IXFR):
        # Over TCP, transfers are dns/xfr_out's; reaching here means they are not
        # configured, or AXFR over UDP (RFC 5936 §4.2): RFC 5936 §2.2.1 allows REFUSED.
        return Reply(Kind.REFUSED, authoritative=False, scope=Scope.STATIC)
    for alt in settings.alt:
        if is_subdomain(q.name, alt.origin):
            settings = alt
            break
    memo = materials if materials is not None else MaterialCache()
    lookup = _Lookup(registry, static, settings, rng, q.tcp, memo)
    lookup.whole, lookup.members = q.whole, q.members
    reply = lookup.resolve(q.name, q.qtype)
    if q.qclass == ANY and reply.authoritative:
        # QCLASS * asks for every class (RFC 1035 §3.2.5); we are authoritative for
        # class IN only, so the reply cannot claim to be complete: no AA bit.
        return replace(reply, authoritative=False)
    return reply


class _Lookup:
    def __init__(
        self,
        registry: Registry,
        static: StaticZones,
        settings: Settings,
        rng: random.Random,
        tcp: bool,
        materials: MaterialCache,
    ) -> None:
        self.registry = registry
        self.static = static
        self.settings = settings
        self.rng = rng
        self.tcp = tcp
        self.materials = materials
        self.whole = False  # Question.whole: a zone transfer's view
        self.members: frozenset[str] | None = None

    def _room(self) -> int:
        """Octets the answer may fill: the largest reply's, or no limit for a transfer."""
        return WHOLE_ROOM if self.whole else reply_room(self.tcp)

    # --------------------------------------------------------------- routing
    def resolve(self, qname: Name, qtype: int) -> Reply:
        origin = self.settings.origin
        zone = self.static.find(qname)
        if is_subdomain(qname, origin) and (zone is None or len(zone.origin) <= len(origin)):
            return self._dynamic(qname, qtype)
        if zone is not None:
            return self._static(zone, qname, qtype, chain=0)
        return Reply(Kind.REFUSED, authoritative=False, scope=Scope.STATIC)

    # ------------------------------------------------------------ dynamic zone
    def _dynamic(self, qname: Name, qtype: int) -> Reply:
        s = self.settings
        rel = relative(qname, s.origin)
        reg = self.registry
        if not rel:
            return self._apex(qtype)
        if rel == (s.ns_label,):
            records = self._rrset(qname, qtype, self._ns_address_records())
            return self._positive(records, qname, scope=Scope.STATIC)
        service = rel[-1]
        if reg.has_service(service):
            return self._service_node(service, rel[:-1], qname, qtype)
        if rel[-1] in dnssd.PROTOS:
            sd = dnssd.lookup(
                rel, reg, s.origin, self._sd_material, self._room(),
                srv_only=qtype == SRV and not self.whole,
                whole=self.whole, members=self.members,
            )  # fmt: skip
            if sd is not None:
                return self._dnssd(sd, qname, qtype)
        if s.rfc2782_tags and len(rel) == 2 and rel[0][:1] == rel[1][:1] == "_":
            # Consul's _<svc>._<tag>: any label other than _tcp/_udp is a tag.
            tagged_service, tag = rel[0][1:], rel[1][1:]
            if reg.has_tag(tagged_service, tag):
                material = self._material(
                    tagged_service,
                    ("tag", tag),
                    lambda: reg.tagged(tagged_service, (tag,)),
                    tagged_with((tag,)),
                )
                return self._service_answer(tagged_service, material, qname, qtype, types=(SRV,))
        if len(rel) == 1 and rel[0] in ("_tcp", "_udp"):
            proto = rel[0][1:]
            # Empty non-terminal above _svc._proto, and above _dns-sd._udp (RFC 6763 §9).
            if proto == "udp" or any(reg.has_proto(svc, proto) for svc in reg.services()):
                return self._negative(Kind.NODATA)
        zone = self.static.zones.get(s.origin)
        if zone is not None:
            return self._static(zone, qname, qtype, chain=0)
        return self._negative(Kind.NXDOMAIN)

    def _apex(self, qtype: int) -> Reply:
        s = self.settings
        apex = s.origin
        soa = [self._soa_record()]
        ns = [Record(apex, NS, s.ns_ttl, Target(s.ns_name))]
        static_zone = self.static.zones.get(apex)
        extra = static_zone.rrsets(apex) if static_zone is not None else {}
        by_type: dict[int, list[Record]] = {SOA: soa, NS: ns}
        for rtype, records in extra.items():
            by_type.setdefault(rtype, []).extend(records)
        chosen = self._any(by_type) if qtype == ANY else by_type.get(qtype, [])
        if not chosen:
            return self._negative(Kind.NODATA)
        b = _Builder(answer=list(chosen))
        if any(r.rtype == NS for r in chosen):
            b.additional.extend(self._ns_address_records())
        # The SOA serial is the revision: apex answers move with every change.
        return self._reply(Kind.ANSWER, b, scope=Scope.GLOBAL)

    def _material(
        self,
        service: str,
        key: PoolKey,
        candidates: Callable[[], Iterable[Instance] | None],
        member: Callable[[Instance], bool] | None,
    ) -> Material:
        origin = self.settings.origin
        return self.materials.get(self.registry, service, key, candidates, origin, member)

    def _service_node(self, service: str, left: Name, qname: Name, qtype: int) -> Reply:
        reg = self.registry
        if not left:
            material = self._material(service, (), lambda: None, everyone)
            return self._service_answer(service, material, qname, qtype)
        if len(left) == 1:
            label = left[0]
            instance = reg.get(service, label)
            if instance is not None:
                return self._instance_answer(service, instance, qname, qtype)
            if reg.has_tag(service, label):
                material = self._material(
                    service, ("tag", label), lambda: reg.tagged(service, left), tagged_with(left)
                )
                return self._service_answer(service, material, qname, qtype)
            return self._negative(Kind.NXDOMAIN)
        material = self._material(
            service, ("tag", *left), lambda: reg.tagged(service, left), tagged_with(left)
        )
        if not material.count and not reg.tagged(service, left):
            return self._negative(Kind.NXDOMAIN)
        return self._service_answer(service, material, qname, qtype)

    def _service_answer(
        self,
        service: str,
        material: Material,
        qname: Name,
        qtype: int,
        *,
        types: tuple[int, ...] = (A, AAAA, SRV),
        txt_of: Instance | None = None,
    ) -> Reply:
        """Records of the served instances of ``material``; NODATA when none is served.

        Only as many instances are drawn as the largest reply could carry
        (SPEC §2 "Answers are bounded"); ``available`` tells the encoder how
        many there were, so a reply that carries fewer says so.
        """
        b = _Builder()
        if material.panic:
            b.ede.append((EDE_OTHER, f"panic threshold: serving every live instance of {service}"))
        cap = self.settings.max_answers
        # Octets left in the largest reply: ANY draws only what could still fit.
        room = self._room()

        def has(rtype: int) -> bool:
            if rtype == TXT:
                return txt_of is not None and bool(material.count) and bool(txt_of.reg.meta)
            return material.pool(rtype).count > 0

        for rtype in self._wanted(types, qtype, has):
            if rtype == TXT:
                if has(TXT):
                    assert txt_of is not None
                    # RFC 6763 §6.3: one "key=value" string per attribute.
                    strings = tuple(f"{k}={v}".encode()[:255] for k, v in txt_of.reg.meta)
                    b.answer.append(Record(qname, TXT, txt_of.reg.dns_ttl, TXTData(strings)))
                    b.available += 1
                continue
            pool = material.pool(rtype)
            if not pool.count:
                continue
            if self.whole:
                # The whole RRset (or its members' part), and the TTL that goes with it.
                chosen = material.every(rtype, self.members)
                b.answer.extend(material.answer_records(chosen, rtype, qname, pool.ttl))
                b.sources.extend(i.reg.id for i in chosen)
                b.ttls.append((rtype, pool.ttl))
                continue
            chosen = material.draw(rtype, draw_limit(pool, room, cap), self.rng)
            room -= len(chosen) * pool.min_rr
            b.available += pool.count if cap is None else min(cap, pool.count)
            b.answer.extend(material.answer_records(chosen, rtype, qname, pool.ttl))
            if rtype == SRV:
                b.additional.extend(material.target_addresses(chosen))
        if not b.answer:
            # A transfer asking for some members' part still learns the RRsets' TTLs.
            return replace(self._negative(Kind.NODATA, ede=b.ede), ttls=tuple(b.ttls))
        # One address record per distinct instance target: nothing to deduplicate.
        return self._reply(Kind.ANSWER, b, scope=service, unique=True)

    def _dnssd(self, sd: dnssd.SdAnswer, qname: Name, qtype: int) -> Reply:
        """A DNS-SD name (RFC 6763): PTR browsing, instance SRV/TXT (dns/dnssd)."""
        if qtype == SRV and sd.srv is not None:
            # _<svc>._<proto> SRV (RFC 2782) keeps its weighted order.
            service, material = sd.srv
            return self._service_answer(service, material, qname, qtype, types=(SRV,))
        scope = Scope.STATIC if sd.fixed else sd.service or Scope.GLOBAL
        b = _Builder()
        b.ede.extend(
            (EDE_OTHER, f"panic threshold: serving every live instance of {service}")
            for service in sd.panic
        )
        chosen = self._any(sd.rrsets) if qtype == ANY else list(sd.rrsets.get(qtype, ()))
        if not chosen:
            return replace(self._negative(Kind.NODATA, ede=b.ede), ttls=sd.ttls)
        if self.whole:
            # Same order as _any over TCP: every RRset, in the order the name holds them.
            for rtype in sd.rrsets if qtype == ANY else (qtype,):
                count = len(sd.rrsets.get(rtype, ()))
                b.sources.extend(sd.sources.get(rtype, ("",) * count)[:count])
            b.ttls.extend(sd.ttls)
        b.answer.extend(chosen)
        b.additional.extend(sd.additional)
        b.available = sd.available if len(chosen) == len(sd.rrsets.get(qtype, ())) else 0
        return self._reply(Kind.ANSWER, b, scope=scope)

    def _sd_material(self, service: str, proto: str, tag: str | None) -> Material:
        """Served instances of ``service`` over ``proto`` (with ``tag``), for DNS-SD."""
        return self.materials.sd(self.registry, service, proto, tag, self.settings.origin)

    def _instance_answer(self, service: str, instance: Instance, qname: Name, qtype: int) -> Reply:
        material = self.materials.single(self.registry, instance, self.settings.origin)
        return self._service_answer(
            service, material, qname, qtype, types=(A, AAAA, SRV, TXT), txt_of=instance
        )

    # ------------------------------------------------------------ static zones
    def _static(self, zone: StaticZone, qname: Name, qtype: int, chain: int) -> Reply:
        # A file for the dynamic zone has no SOA of its own: the generated one
        # (serial = revision) stands in, so its negative answers are GLOBAL.
        soa = zone.soa
        neg_scope = Scope.STATIC if soa is not None else Scope.GLOBAL
        # A delegation point between the apex and the name: refer, not answer (RFC 1034 §4.3.2).
        rel = relative(qname, zone.origin)
        for depth in range(len(rel), 0, -1):
            cut = qname[depth - 1 :]
            ns_set = zone.rrsets(cut).get(NS)
            if ns_set:
                glue = [
                    r
                    for ns in ns_set
                    if isinstance(ns.rdata, Target)
                    for r in self._static_addresses(ns.rdata.target)
                ]
                return Reply(
                    Kind.REFERRAL,
                    authority=tuple(ns_set),
                    additional=tuple(glue),
                    authoritative=False,
                    scope=Scope.STATIC,
                )
        scope = Scope.STATIC
        rrsets = zone.rrsets(qname)
        synthesized = False
        if not rrsets and qname not in zone.names:
            rrsets = self._wildcard(zone, qname)
            synthesized = bool(rrsets)
            if not rrsets:
                return self._negative(Kind.NXDOMAIN, soa=soa, scope=neg_scope)
        if not rrsets:
            return self._negative(Kind.NODATA, soa=soa, scope=neg_scope)
        b = _Builder()
        if qtype == ANY:
            chosen = self._any(rrsets)
        elif qtype in rrsets:
            chosen = list(rrsets[qtype])
        elif CNAME in rrsets:
            chosen = list(rrsets[CNAME])
        else:
            return self._negative(Kind.NODATA, soa=soa, scope=neg_scope)
        if synthesized:
            chosen = [Record(qname, r.rtype, r.ttl, r.rdata) for r in chosen]
        b.answer.extend(chosen)
        for r in chosen:
            if isinstance(r.rdata, MXData):
                b.additional.extend(self._static_addresses(r.rdata.exchange))
            elif isinstance(r.rdata, SRVData) or (r.rtype == NS and isinstance(r.rdata, Target)):
                target = r.rdata.target
                b.additional.extend(self._static_addresses(target))
        if chosen and chosen[0].rtype == CNAME and qtype not in (CNAME, ANY):
            assert isinstance(chosen[0].rdata, Target)
            return self._chase(b, chosen[0].rdata.target, qtype, chain, scope)
        return self._reply(Kind.ANSWER, b, scope=scope)

    def _chase(self, b: _Builder, target: Name, qtype: int, chain: int, scope: str) -> Reply:
        """Follow a CNAME into the zones we hold (RFC 1034 §4.3.2 step 3a)."""
        if chain >= MAX_CNAME_CHAIN:
            return self._reply(Kind.ANSWER, b, scope=scope)
        follow = _Lookup(
            self.registry, self.static, self.settings, self.rng, self.tcp, self.materials
        )
        zone = self.static.find(target)
        origin = self.settings.origin
        if is_subdomain(target, origin) and (zone is None or len(zone.origin) <= len(origin)):
            rest = follow._dynamic(target, qtype)
        elif zone is not None:
            rest = follow._static(zone, target, qtype, chain + 1)
        else:
            return self._reply(Kind.ANSWER, b, scope=scope)  # out of our zones: the client goes on
        b.answer.extend(rest.answer)
        b.additional.extend(rest.additional)
        kind = rest.kind if rest.kind is Kind.NXDOMAIN else Kind.ANSWER  # RFC 6604 §3
        if rest.scope != scope:
            scope = Scope.GLOBAL
        authority = rest.authority if not rest.answer else ()
        return Reply(
            kind,
            answer=tuple(b.answer),
            authority=authority,
            additional=tuple(b.additional),
            ede=tuple(b.ede) + rest.ede,
            scope=scope,
        )

    def _wildcard(self, zone: StaticZone, qname: Name) -> dict[int, tuple[Record, ...]]:
        """RFC 4592 §3.3.1: the source of synthesis is ``*`` at the closest encloser."""
        for cut in range(1, len(qname) - len(zone.origin) + 1):
            encloser = qname[cut:]
            if encloser in zone.names:
                return dict(zone.rrsets(("*", *encloser)))
        return {}

    def _static_addresses(self, target: Name) -> list[Record]:
        zone = self.static.find(target)
        if zone is None:
            return []
        sets = zone.rrsets(target)
        return [*sets.get(A, ()), *sets.get(AAAA, ())]

    # ------------------------------------------------------------- record kit
    def _wanted(self, types: Sequence[int], qtype: int, has: Callable[[int], bool]) -> list[int]:
        if qtype != ANY:
            return [qtype] if qtype in types else []
        present = [t for t in types if has(t)]
        if not self.tcp and present:
            return present[:1]  # RFC 8482 §4.1: one RRset is enough over UDP
        return present

    def _any(self, by_type: Mapping[int, Sequence[Record]]) -> list[Record]:
        sets = [list(v) for v in by_type.values() if v]
        if not sets:
            return []
        if not self.tcp:
            return sets[0]  # RFC 8482 §4.1
        return [r for rs in sets for r in rs]

    def _ns_address_records(self) -> list[Record]:
        s = self.settings
        return [
            Record(s.ns_name, A if a.version == 4 else AAAA, s.ns_ttl, Address(a))
            for a in s.ns_addresses
        ]

    def _rrset(self, qname: Name, qtype: int, records: list[Record]) -> list[Record]:
        if qtype == ANY:
            return records if self.tcp else [r for r in records if r.rtype == records[0].rtype]
        return [r for r in records if r.rtype == qtype]

    def _soa_record(self) -> Record:
        s = self.settings
        return Record(
            s.origin,
            SOA,
            s.negative_ttl,
            SOAData(
                mname=s.ns_name,
                rname=(s.hostmaster, *s.origin),
                serial=self.registry.revision % 2**32,
                refresh=s.soa_refresh,
                retry=s.soa_retry,
                expire=s.soa_expire,
                minimum=s.negative_ttl,
            ),
        )

    def _positive(self, records: list[Record], qname: Name, *, scope: str) -> Reply:
        if not records:
            return self._negative(Kind.NODATA)
        return Reply(Kind.ANSWER, answer=tuple(records), scope=scope)

    def _negative(
        self,
        kind: Kind,
        *,
        soa: Record | None = None,
        scope: str = Scope.GLOBAL,
        ede: Iterable[tuple[int, str]] = (),
    ) -> Reply:
        """NXDOMAIN or NODATA with the zone's SOA in authority (RFC 2308 §2.1, §2.2)."""
        record = soa if soa is not None else self._soa_record()
        if soa is None:
            scope = Scope.GLOBAL  # the generated SOA's serial is the revision
        assert isinstance(record.rdata, SOAData)
        # RFC 2308 §5: the SOA's TTL in a negative reply is min(TTL, MINIMUM).
        ttl = min(record.ttl, record.rdata.minimum)
        return Reply(
            kind,
            authority=(Record(record.owner, SOA, ttl, record.rdata),),
            ede=tuple(ede),
            scope=scope,
        )

    def _reply(self, kind: Kind, b: _Builder, *, scope: str, unique: bool = False) -> Reply:
        return Reply(
            kind,
            answer=tuple(b.answer),
            additional=tuple(b.additional) if unique else tuple(_dedupe(b.additional)),
            ede=tuple(b.ede),
            scope=scope,
            available=max(b.available, len(b.answer)),
            sources=tuple(b.sources),
            ttls=tuple(b.ttls),
        )


def _dedupe(records: Iterable[Record]) -> list[Record]:
    seen: set[Record] = set()
    out = []
    for r in records:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out
