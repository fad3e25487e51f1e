"""Per-service answer material, built once per service revision. Pure.

A service of 50 000 instances must not cost 50 000 records per query (SPEC
§2 "Answers are bounded"). What a query on a service needs is computed once
per revision of that service and kept in a :class:`MaterialCache`: the
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
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dnsreg.core.model import Instance
from dnsreg.core.names import Name
from dnsreg.core.registry import Registry
from dnsreg.dns.records import AAAA, SRV, A

# The largest replies (dns/wire: TCP_LIMIT, EDNS_UDP_LIMIT); wire imports this package's
# answers module, so the numbers are repeated rather than imported.
TCP_REPLY_LIMIT = 65535  # RFC 1035 §4.2.2: a two-octet length prefix
UDP_REPLY_LIMIT = 1232
HEADER_OCTETS = 12
# An answer RR: owner compressed to a pointer at the question (2) + type, class, TTL, RDLENGTH.
RR_FIXED = 12
RDATA_OCTETS = {A: 4, AAAA: 16}
SRV_FIXED = 6  # priority, weight, port; the target is never compressed (RFC 2782)

# A group this much larger than the draw is sampled by bisection instead of shuffled whole.
SHUFFLE_FACTOR = 4
SHUFFLE_MIN = 64

DEFAULT_MAX_ENTRIES = 1024
# Instances referenced by all cached material together: bounds memory on hostile key sets.
DEFAULT_MAX_INSTANCES = 400_000

PoolKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Group:
    """Instances of one priority, with running weight totals for bisection."""

    priority: int
    instances: tuple[Instance, ...]
    cumulative: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.cumulative[-1]


@dataclass(frozen=True, slots=True)
class Pool:
    """The served instances answering one record type, lowest priority first."""

    groups: tuple[Group, ...]
    count: int
    ttl: int  # RFC 2181 §5.2: one TTL for the RRset, the smallest of its instances
    min_rr: int  # octets of the smallest record of this pool in an answer

    def draw(self, k: int, rng: random.Random) -> list[Instance]:
        """Up to ``k`` instances: lower priority first, weighted random within one.

        Draws without replacement with probability proportional to weight
        (RFC 2782's selection, applied to A/AAAA clients too). A group at most
        a few times larger than the draw is ordered whole by Efraimidis–Spirakis
        keys (u^(1/w)); a far larger one is sampled by bisecting the
        cumulative weights, rejecting repeats, so the cost is O(k log n).
        """
        out: list[Instance] = []
        for group in self.groups:
            need = k - len(out)
            if need <= 0:
                break
            members = group.instances
            if len(members) <= SHUFFLE_FACTOR * need + SHUFFLE_MIN:
                keyed = sorted(
                    (-math.log(rng.random() or 1e-300) / i.reg.weight, n)
                    for n, i in enumerate(members)
                )
                out.extend(members[n] for _, n in keyed[:need])
            else:
                out.extend(_sample(group, need, rng))
        return out


def _sample(group: Group, need: int, rng: random.Random) -> list[Instance]:
    members, cumulative, total = group.instances, group.cumulative, group.total
    n = len(members)
    chosen: set[int] = set()
    out: list[Instance] = []
    attempts = 8 * need + 64
    random_ = rng.random
    while len(out) < need and attempts:
        attempts -= 1
        at = min(bisect.bisect_right(cumulative, random_() * total), n - 1)
        if at not in chosen:
            chosen.add(at)
            out.append(members[at])
    # Weights so skewed that a few heavy instances keep coming back: fill the rest
    # uniformly (need < n / SHUFFLE_FACTOR here, so this ends quickly).
    while len(out) < need:
        at = rng.randrange(n)
        if at not in chosen:
            chosen.add(at)
            out.append(members[at])
    return out


def _pool(instances: Iterable[Instance], rr_octets: Callable[[Instance], int]) -> Pool:
    by_priority: dict[int, list[Instance]] = {}
    ttl: int | None = None
    smallest: int | None = None
    for i in instances:
        by_priority.setdefault(i.reg.priority, []).append(i)
        reg_ttl = i.reg.dns_ttl
        ttl = reg_ttl if ttl is None or reg_ttl < ttl else ttl
        size = rr_octets(i)
        smallest = size if smallest is None or size < smallest else smallest
    groups = tuple(
        Group(p, tuple(members), tuple(itertools.accumulate(i.reg.weight for i in members)))
        for p, members in sorted(by_priority.items())
    )
    count = sum(len(g.instances) for g in groups)
    return Pool(groups, count, ttl or 0, smallest or RR_FIXED)


def _name_octets(name: Name) -> int:
    return sum(len(label) + 1 for label in name) + 1


@dataclass(slots=True)
class Material:
    """What answers about one pool of one service need, at one service revision."""

    stamp: int
    instances: tuple[Instance, ...]  # the served ones
    panic: bool
    origin: Name
    _pools: dict[int, Pool] = field(default_factory=dict)

    def pool(self, rtype: int) -> Pool:
        """The pool answering ``rtype`` (A: IPv4, AAAA: IPv6, SRV: all), built on first use."""
        found = self._pools.get(rtype)
        if found is None:
            if rtype == SRV:
                tail = _name_octets(self.origin)
                found = _pool(
                    self.instances,
                    lambda i: RR_FIXED + SRV_FIXED + len(i.reg.id) + len(i.reg.service) + 2 + tail,
                )
            else:
                version = 4 if rtype == A else 6
                size = RR_FIXED + RDATA_OCTETS.get(rtype, 0)
                found = _pool(
                    (i for i in self.instances if i.reg.address.version == version),
                    lambda _i: size,
                )
            self._pools[rtype] = found
        return found


def draw_limit(pool: Pool, tcp: bool, max_answers: int | None) -> int:
    """How many instances to draw: one more than the largest reply can hold, at most."""
    limit = TCP_REPLY_LIMIT if tcp else UDP_REPLY_LIMIT
    k = (limit - HEADER_OCTETS) // pool.min_rr + 1
    if max_answers is not None:
        k = min(k, max_answers)
    return min(k, pool.count)


class MaterialCache:
    """Material per (service, pool key), valid while the service's revision stands.

    Bounded twice: in entries and in instances referenced, oldest first (a
    dict keeps insertion order; a hit moves its entry to the end).
    """

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_instances: int = DEFAULT_MAX_INSTANCES
    ) -> None:
        self.max_entries = max_entries
        self.max_instances = max_instances
        self.entries: dict[tuple[str, PoolKey, Name], Material] = {}
        self.instances = 0
        self.builds = 0

    def get(
        self,
        registry: Registry,
        service: str,
        key: PoolKey,
        candidates: Callable[[], Iterable[Instance] | None],
        origin: Name,
    ) -> Material:
        """The material of ``candidates`` (None: the whole service) of ``service``."""
        stamp = registry.service_revision(service)
        entries = self.entries
        cache_key = (service, key, origin)  # a zone and its alt_domain: one each
        found = entries.pop(cache_key, None)
        if found is not None:
            if found.stamp == stamp:
                entries[cache_key] = found
                return found
            self.instances -= len(found.instances)
        pool = candidates()
        if pool is None:
            served = registry.served(service)
        elif registry.panic_threshold is None:
            served = registry.served(service, pool, panic=False)
        else:
            # The panic verdict is the whole service's: take it from the service's own material.
            whole = self.get(registry, service, (), lambda: None, origin)
            served = registry.served(service, pool, panic=whole.panic)
        material = Material(stamp, served.instances, served.panic, origin)
        self.builds += 1
        self._make_room(len(material.instances))
        entries[cache_key] = material
        self.instances += len(material.instances)
        return material

    def _make_room(self, incoming: int) -> None:
        entries = self.entries
        while entries and (
            len(entries) >= self.max_entries or self.instances + incoming > self.max_instances
        ):
            oldest = next(iter(entries))
            self.instances -= len(entries.pop(oldest).instances)
