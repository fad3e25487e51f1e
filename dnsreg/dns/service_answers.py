"""Per-service answer material, built once per service revision. Pure.

A service of 50 000 instances must not cost 50 000 records per query (SPEC
§2 "Answers are bounded"). What a query on a service needs is computed once
per revision of that service and kept (``material_cache``): the
served instances (with the panic verdict), split by record family (A, AAAA,
SRV) and grouped by priority, with cumulative weights for weighted sampling.
A query then draws only as many instances as could fit in the largest reply
it may get (65 535 octets over TCP, 1 232 over UDP), so its cost follows the
size of the reply, not the size of the service.

Nothing here reads a clock or a socket; randomness comes from the ``rng``
the caller passes in, and validity from the registry's service revision.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from dnsreg.core.model import Instance
from dnsreg.core.names import Name
from dnsreg.dns.pools import Pool
from dnsreg.dns.record_memo import RecordMemo
from dnsreg.dns.records import (
    AAAA,
    ANY,
    SRV,
    A,
    Record,
    SRVData,
    address_record,
    srv_record,
)

# The largest replies (dns/wire: TCP_LIMIT, EDNS_UDP_LIMIT); wire imports this package's
# answers module, so the numbers are repeated rather than imported.
TCP_REPLY_LIMIT = 65535  # RFC 1035 §4.2.2: a two-octet length prefix
UDP_REPLY_LIMIT = 1232
HEADER_OCTETS = 12
# An answer RR: owner compressed to a pointer at the question (2) + type, class, TTL, RDLENGTH.
RR_FIXED = 12
RDATA_OCTETS = {A: 4, AAAA: 16}
SRV_FIXED = 6  # priority, weight, port; the target is never compressed (RFC 2782)

# Weighted draws kept per (type, size) of one material, served in turn (as the answer
# cache keeps shuffled variants of one reply): answers vary, memory stays bounded.
DRAW_VARIANTS = 8
# Draws longer than this keep their records (below it a memo lookup per record is cheap).
KEEP_RECORDS = 256


def _name_octets(name: Name) -> int:
    return sum(len(label) + 1 for label in name) + 1


@dataclass(slots=True)
class Material:
    """What answers about one pool of one service need, at one service revision.

    ``served``: the served instances by id. Patched in place when its service
    moves (:meth:`MaterialCache.get`), so a change costs the instances it
    touched, not the service. ``draws`` keeps :data:`DRAW_VARIANTS` weighted
    draws per (type, size) and serves them in turn: a query the answer cache
    misses (another EDNS size, say) reuses one instead of drawing and building
    records afresh, and the records built stay bounded per revision.
    """

    stamp: int
    served: dict[str, Instance]
    panic: bool
    origin: Name
    epoch: int = 0
    _pools: dict[int, Pool] = field(default_factory=dict)
    memo: RecordMemo = field(default_factory=lambda: RecordMemo())
    service: str = ""
    draws: dict[tuple[int, int], list[list[Instance]]] = field(default_factory=dict)
    turn: int = 0
    # Records of a kept draw, by (the draw's id, type, owner, TTL): a 64 KiB TCP answer
    # drawn before is not looked up again record by record. Cleared with ``draws``.
    built: dict[tuple[int, int, Name, int], list[Record]] = field(default_factory=dict)
    kept: dict[int, list[Instance]] = field(default_factory=dict)  # the draws, by id()
    _by_id: list[str] | None = None  # served ids in order, for DNS-SD browsing (RFC 6763 §4)
    # Whatever else a module derives from this revision (dnssd: browse answers by size).
    derived: dict[tuple[object, ...], object] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.served)

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The served instances (a copy: O(instances), not for the query path)."""
        return tuple(self.served.values())

    def records(
        self,
        rtype: int,
        owner: Name,
        ttl: int,
        chosen: Collection[Instance],
        make: Callable[[Instance], Record],
    ) -> list[Record]:
        """The records of ``chosen`` (``make`` builds one), reused while they stand."""
        draw = self.kept.get(id(chosen))
        kept = draw is chosen and draw is not None and len(draw) > KEEP_RECORDS
        if kept:
            found = self.built.get((id(chosen), rtype, owner, ttl))
            if found is not None:
                return found
        out = self.memo.records((self.service, rtype, owner, ttl, self.origin), chosen, make)
        if kept:
            self.built[(id(chosen), rtype, owner, ttl)] = out
        return out

    def answer_records(
        self, instances: Sequence[Instance], rtype: int, qname: Name, ttl: int
    ) -> list[Record]:
        """A, AAAA or SRV records of ``instances`` owned by ``qname``."""
        # RFC 2181 §5.2: every record of an RRset carries the same TTL (the pool's smallest).
        if rtype in (A, AAAA):
            return self.records(
                rtype,
                qname,
                ttl,
                instances,
                lambda i: address_record(qname, rtype, ttl, i.reg.address),
            )
        if rtype == SRV:
            return self.records(
                SRV,
                qname,
                ttl,
                instances,
                lambda i: srv_record(
                    qname, ttl, SRVData(i.reg.priority, i.reg.weight, i.reg.port, self.target(i))
                ),
            )
        return []

    def target(self, instance: Instance) -> Name:
        """The SRV target of an instance: ``<id>.<service>.<zone>``."""
        return (instance.reg.id, instance.reg.service, *self.origin)

    def target_addresses(self, instances: Sequence[Instance]) -> list[Record]:
        """The address records of SRV targets, for the additional section."""

        def make(i: Instance) -> Record:
            rtype = A if type(i.reg.address) is IPv4Address else AAAA
            return address_record(self.target(i), rtype, i.reg.dns_ttl, i.reg.address)

        return self.records(ANY, (), 0, instances, make)

    def pool(self, rtype: int) -> Pool:
        """The pool answering ``rtype`` (A: IPv4, AAAA: IPv6, SRV: all)."""
        found = self._pools.get(rtype)
        if found is None:
            found = self._new_pool(rtype)
            members: Collection[Instance] = self.served.values()
            if rtype != SRV:
                family = IPv4Address if rtype == A else IPv6Address
                members = [i for i in members if type(i.reg.address) is family]
            found.fill(members)
            self._pools[rtype] = found
        return found

    def open_pools(self) -> None:
        """Every pool, empty, so :meth:`extend` fills them as it goes (a built material)."""
        for rtype in (A, AAAA, SRV):
            self._pools.setdefault(rtype, self._new_pool(rtype))

    def extend(self, instances: list[Instance]) -> None:
        """Served instances not in the material yet, added in bulk (one slice of a build)."""
        if not instances:
            return
        self.draws.clear()
        self.built.clear()
        self.kept.clear()
        self.derived.clear()
        self._by_id = None
        self.served.update(zip([i.reg.id for i in instances], instances, strict=True))
        pools = self._pools
        if A in pools or AAAA in pools:
            v4 = [i for i in instances if type(i.reg.address) is IPv4Address]
            if A in pools:
                pools[A].extend(v4)
            if AAAA in pools:
                pools[AAAA].extend(
                    [i for i in instances if type(i.reg.address) is IPv6Address]
                    if len(v4) < len(instances)
                    else []
                )
        if SRV in pools:
            pools[SRV].extend(instances)

    def _new_pool(self, rtype: int) -> Pool:
        if rtype == SRV:
            # Target: id.service.origin, uncompressed (RFC 2782); the shortest id counts.
            base = RR_FIXED + SRV_FIXED + len(self.service) + 2 + _name_octets(self.origin)
            return Pool(base, by_id=True)
        return Pool(RR_FIXED + RDATA_OCTETS.get(rtype, 0), by_id=False)

    def first_by_id(self, k: int) -> list[Instance]:
        """The ``k`` served instances whose ids sort first (sorted once, then kept sorted)."""
        if self._by_id is None:
            self._by_id = sorted(self.served)
        served = self.served
        return [served[i] for i in self._by_id[:k]]

    def every(self, rtype: int, members: frozenset[str] | None = None) -> list[Instance]:
        """Every instance of the ``rtype`` pool (a zone transfer's RRset), or of ``members``."""
        if members is None:
            return [i for group in self.pool(rtype).groups for i in group.instances]
        served = self.served
        return [served[i] for i in sorted(members) if i in served and _answers(rtype, served[i])]

    def draw(self, rtype: int, k: int, rng: random.Random) -> list[Instance]:
        """A weighted draw of ``k`` from the ``rtype`` pool: one of a few kept per revision."""
        kept = self.draws.setdefault((rtype, k), [])
        if len(kept) < DRAW_VARIANTS:
            chosen = self.pool(rtype).draw(k, rng)
            kept.append(chosen)
            self.kept[id(chosen)] = chosen  # held here, so the id names this list alone
            return chosen
        self.turn += 1
        return kept[self.turn % DRAW_VARIANTS]

    def patch(self, before: Instance | None, after: Instance | None) -> None:
        """One instance in, out or replaced (``None``: not served there)."""
        self.draws.clear()
        self.built.clear()
        self.kept.clear()
        self.derived.clear()
        served, pools, by_id = self.served, self._pools, self._by_id
        if by_id is not None and (before is None) != (after is None):
            # In or out of the served set (a replacement keeps its id, and its place).
            if before is not None:
                del by_id[bisect.bisect_left(by_id, before.reg.id)]
            elif after is not None:
                bisect.insort(by_id, after.reg.id)
        if before is not None:
            del served[before.reg.id]
            for rtype, pool in pools.items():
                if _answers(rtype, before):
                    pool.remove(before)
        if after is not None:
            served[after.reg.id] = after
            for rtype, pool in pools.items():
                if _answers(rtype, after):
                    pool.add(after)


def _answers(rtype: int, instance: Instance) -> bool:
    """Whether ``instance`` belongs in the ``rtype`` pool (SRV: every one)."""
    if rtype == SRV:
        return True
    family = type(instance.reg.address)
    return (rtype == A and family is IPv4Address) or (rtype == AAAA and family is IPv6Address)


def everyone(instance: Instance) -> bool:
    return True


def tagged_with(tags: Sequence[str]) -> Callable[[Instance], bool]:
    """Whether an instance carries every one of ``tags`` (as ``Registry.tagged`` asks)."""
    return lambda instance: all(t in instance.reg.tags for t in tags)


def served_now(instance: Instance) -> bool:
    """``Registry.served``'s verdict for one instance outside panic mode."""
    return instance.maintenance is None and (not instance.checks or instance.health.served)


def reply_room(tcp: bool) -> int:
    """Octets the answer section of the largest reply over this transport may fill."""
    return (TCP_REPLY_LIMIT if tcp else UDP_REPLY_LIMIT) - HEADER_OCTETS


def draw_limit(pool: Pool, room: int, max_answers: int | None) -> int:
    """How many instances to draw: one more than ``room`` octets can hold, at most."""
    if room <= 0:
        return 0
    k = room // pool.min_rr + 1
    if max_answers is not None:
        k = min(k, max_answers)
    return min(k, pool.count)
