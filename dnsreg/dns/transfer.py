"""The dynamic zone as a transferable whole: snapshots, an IXFR journal, serials. Pure.

A snapshot holds exactly what DNS serves at one registry revision: every name
of the dynamic zone is asked of the one answer builder (``answers.answer``,
QTYPE ANY over TCP, so every RRset at the name comes back) and its answer
records are kept. Static names of the dynamic zone come along, delegations
with their NS and glue. The SOA serial is the revision (mod 2^32).

The zone is kept in parts: one per service (the names under ``<svc>.Z`` and
its DNS-SD names) and one for the rest (apex, ``ns.Z``, static names,
``_services._dns-sd._udp.Z``). :meth:`Journal.observe` recomputes only the
parts whose revision moved, and records the difference as one journal entry
(RFC 1995 §4 "incremental transfer" data).

A transfer carries whole RRsets (``Question.whole``), not the reply-sized draw
a query gets: a 50 000-instance service's name holds 50 000 records. So the
names many instances make records at (the service, its tags, its DNS-SD
types) keep each instance's records apart (:class:`_Shared`), and a change
asks the builder for the changed instances' part alone: it costs the
instances it touched, unless an RRset's TTL moved (RFC 2181 §5.2: the
smallest of all members'), which changes every record of it. The journal
keeps ``limit`` revisions; an IXFR from further back falls back to a full
transfer.

Not transferred: tag *intersections* (``<t2>.<t1>.<svc>.Z``), which DNS
computes for any combination asked; each single tag's name is transferred.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from dnsreg.core.names import Name, is_subdomain
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Kind, Question, Reply, Settings, answer
from dnsreg.dns.dnssd import SERVICES, SUB, type_name
from dnsreg.dns.material_cache import MaterialCache
from dnsreg.dns.records import AAAA, ANY, IN, NS, SOA, SRV, A, Record, SOAData
from dnsreg.dns.zones import StaticZones

SERIAL_MOD = 2**32
_HALF = 2**31
_REST = "\0rest"  # the part that is not one service's


def serial_of(revision: int) -> int:
    return revision % SERIAL_MOD


def serial_lt(a: int, b: int) -> bool:
    """RFC 1982 §3.2: ``a`` < ``b`` in 32-bit serial number arithmetic.

    Defined when the two differ by less than 2^31 either way; exactly 2^31
    apart the comparison is undefined and we answer False (not older).
    """
    return a != b and ((a < b and b - a < _HALF) or (a > b and a - b > _HALF))


@dataclass(frozen=True, slots=True)
class Diff:
    """From one journaled revision to the next: RFC 1995 §4's deleted and added RRs."""

    from_revision: int
    to_revision: int
    deleted: tuple[Record, ...]
    added: tuple[Record, ...]


@dataclass(slots=True)
class _Shared:
    """A name many instances make records at: each one's part, and the records counted
    (two instances at one address make one A record: it goes when the last one does)."""

    ttls: tuple[tuple[int, int], ...] = ()
    by_id: dict[str, tuple[Record, ...]] = field(default_factory=dict)
    counts: Counter[Record] = field(default_factory=Counter)

    def put(
        self, source: str, records: tuple[Record, ...], gone: set[Record], new: set[Record]
    ) -> None:
        """``source``'s part is now ``records``: what left the name goes in ``gone``,
        what came to it in ``new``."""
        counts = self.counts
        for record in self.by_id.pop(source, ()):
            counts[record] -= 1
            if not counts[record]:
                del counts[record]
                gone.add(record)
        if records:
            self.by_id[source] = records
        for record in records:
            if not counts[record]:
                new.add(record)
            counts[record] += 1


class Journal:
    """The current zone, by part and name, and the differences of the last ``limit`` revisions."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        static: StaticZones,
        *,
        limit: int = 1000,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.static = static
        self.limit = limit
        self.revision = registry.revision
        self._static_seen = static
        self._rng = random.Random(0)  # orders only; a snapshot is a set
        # Kept across observations: a change patches its service's material, no rebuild.
        self._materials = MaterialCache()
        self._part_revision: dict[str, int] = {}
        self._panic: dict[str, bool] = {}
        # part → name → the records DNS serves there.
        self._nodes: dict[str, dict[Name, frozenset[Record]]] = {}
        # service → instance id → the names of that instance alone.
        self._own: dict[str, dict[str, tuple[Name, ...]]] = {}
        # service → its shared names (service, tags, DNS-SD types) at the last observe.
        self._shared: dict[str, set[Name]] = {}
        # The shared names kept per instance (all but a tag that is also an instance's id).
        self._parts: dict[Name, _Shared] = {}
        self._epochs: dict[str, int] = {}  # service → registry.epoch() at the last observe
        # service → what ``_services._dns-sd._udp`` says of it (RFC 6763 §9): the rest of
        # the zone is asked again only when one of these moves, not on every change.
        self._browsed: dict[str, tuple[object, ...]] = {}
        # Instances known to have changed since the last observe (None: the whole service).
        self._touched: dict[str, set[str] | None] = {}
        self.soa = self._current_soa()
        self.diffs: deque[Diff] = deque()
        self._refresh()

    # ------------------------------------------------------------- reading
    def records(self) -> Iterator[Record]:
        """Every record of the zone but the SOA, at :attr:`revision`."""
        for nodes in self._nodes.values():
            for records in nodes.values():
                yield from records
        for part in self._parts.values():
            yield from part.counts

    def snapshot(self) -> list[Record]:
        """:meth:`records` as a list, copied at C speed (a transfer's one revision)."""
        chain = itertools.chain.from_iterable
        out = list(chain(chain(nodes.values() for nodes in self._nodes.values())))
        out.extend(chain(part.counts for part in self._parts.values()))
        return out

    def soa_at(self, revision: int) -> Record:
        assert isinstance(self.soa.rdata, SOAData)
        return replace(self.soa, rdata=replace(self.soa.rdata, serial=serial_of(revision)))

    def since(self, serial: int) -> list[Diff] | None:
        """The differences from ``serial`` to now; None: not in the journal (send AXFR)."""
        for index, diff in enumerate(self.diffs):
            if serial_of(diff.from_revision) == serial:
                return list(self.diffs)[index:]
        return None

    # ------------------------------------------------------------- writing
    def touch(self, service: str, instance_id: str) -> None:
        """Say which instance a change was about: only its names and the service's
        shared names are asked again (a change costs its service's shared names)."""
        ids = self._touched.setdefault(service, set())
        if ids is not None:
            ids.add(instance_id)

    def observe(self, static: StaticZones | None = None) -> None:
        """Catch up with the registry (and new zone files): one journal entry if it moved."""
        if static is not None:
            self.static = static
        registry = self.registry
        if registry.revision == self.revision and self.static is self._static_seen:
            return
        deleted, added = self._refresh()
        if registry.revision != self.revision:
            self.diffs.append(Diff(self.revision, registry.revision, deleted, added))
            self.revision = registry.revision
            self.soa = self._current_soa()
            # ixfr_journal counts revisions (SPEC §2): drop entries starting further back.
            while self.diffs and self.revision - self.diffs[0].from_revision > self.limit:
                self.diffs.popleft()
        else:
            # New zone files without a registry change: the serial cannot move, so a
            # secondary that is already at this serial must fetch the whole zone.
            self.diffs.clear()

    def _refresh(self) -> tuple[tuple[Record, ...], tuple[Record, ...]]:
        registry = self.registry
        deleted: set[Record] = set()
        added: set[Record] = set()
        touched, self._touched = self._touched, {}

        def update(part: str, names: Iterable[Name], keep: set[Name] | None = None) -> None:
            """Ask ``names`` again; with ``keep``, every other name of the part goes."""
            nodes = self._nodes.setdefault(part, {})
            for name in names:
                new = frozenset(self._collect(name))
                old = nodes.get(name, frozenset())
                deleted.update(old - new)
                added.update(new - old)
                if new:
                    nodes[name] = new
                else:
                    nodes.pop(name, None)
            if keep is not None:
                for name in [n for n in nodes if n not in keep]:
                    deleted.update(nodes.pop(name))

        live = set(registry.services())
        rest_moved = _REST not in self._nodes
        known = {p for p in self._nodes if p != _REST} | set(self._part_revision)
        for gone in [p for p in known if p not in live]:
            for records in self._nodes.pop(gone, {}).values():
                deleted.update(records)
            for name in self._shared.get(gone, ()):
                part = self._parts.pop(name, None)
                if part is not None:
                    deleted.update(part.counts)
            self._part_revision.pop(gone, None)
            self._own.pop(gone, None)
            self._panic.pop(gone, None)
            self._shared.pop(gone, None)
            self._epochs.pop(gone, None)
            rest_moved = self._browsed.pop(gone, None) is not None or rest_moved
        for service in live:
            if self._part_revision.get(service) == registry.service_revision(service):
                continue
            panic = registry.in_panic(service)
            # Which instances moved: the registry's own log says (whoever wrote), else
            # what :meth:`touch` was told, else every instance of the service.
            ids = None
            if service in self._epochs:
                ids = registry.touched_since(service, self._epochs[service])
            if ids is None:
                ids = touched.get(service)
            every = ids is None or self._panic.get(service) != panic
            if ids is None or every:
                ids = set(self._own.get(service, {})) | set(registry.instances(service))
            own = self._own.setdefault(service, {})
            for instance_id in ids:
                old_names = own.pop(instance_id, ())
                names = self._instance_names(service, instance_id)
                if names:
                    own[instance_id] = names
                update(service, set(old_names) | set(names))
            # Shared names are kept per instance (no tag equals an instance's id: the
            # registry refuses that, so none of these is also an instance's own name).
            shared = set(self._shared_names(service))
            for name in shared:
                self._update_part(name, None if every else frozenset(ids), deleted, added)
            unshared = self._shared.get(service, set()) - shared
            for name in unshared & self._parts.keys():
                deleted.update(self._parts.pop(name).counts)
            self._shared[service] = shared
            self._part_revision[service] = registry.service_revision(service)
            self._epochs[service] = registry.epoch(service)
            self._panic[service] = panic
            browsed = self._browse_summary(service)
            if self._browsed.get(service) != browsed:
                self._browsed[service] = browsed
                rest_moved = True
        if rest_moved or self.static is not self._static_seen:
            rest = list(self._rest_names())
            update(_REST, rest, set(rest))
        self._static_seen = self.static
        # A record that went and came back in one refresh (an instance registered again
        # unchanged) never left the zone.
        both = deleted & added
        deleted -= both
        added -= both
        return tuple(sorted(deleted, key=_order)), tuple(sorted(added, key=_order))

    def _update_part(
        self, name: Name, ids: frozenset[str] | None, deleted: set[Record], added: set[Record]
    ) -> None:
        """Bring the kept name ``name`` up to date: ``ids``' parts (None: all of it)."""
        part = self._parts.get(name)
        if part is not None and ids is not None:
            reply = self._ask(name, ids)
            if reply.ttls == part.ttls:
                for source, records in _by_source(name, reply).items():
                    part.put(source, records, deleted, added)
                for source in ids:
                    if source not in reply.sources:
                        part.put(source, (), deleted, added)
                if not part.counts:
                    del self._parts[name]
                return
        # New, asked whole, or an RRset's TTL moved: the name is asked again whole.
        reply = self._ask(name, None)
        fresh = _Shared(reply.ttls)
        for source, records in _by_source(name, reply).items():
            fresh.put(source, records, set(), set())
        old = part.counts if part is not None else Counter()
        deleted.update(r for r in old if r not in fresh.counts)
        added.update(r for r in fresh.counts if r not in old)
        if fresh.counts or fresh.ttls:
            self._parts[name] = fresh
        else:
            self._parts.pop(name, None)

    def _ask(self, name: Name, members: frozenset[str] | None) -> Reply:
        q = Question(name, ANY, IN, tcp=True, whole=True, members=members)
        return answer(q, self.registry, self.static, self.settings, self._rng, self._materials)

    def _current_soa(self) -> Record:
        """The apex SOA exactly as DNS answers it (serial = revision)."""
        q = Question(self.settings.origin, SOA, IN, tcp=True)
        reply = answer(q, self.registry, self.static, self.settings, self._rng, self._materials)
        return reply.answer[0]

    # ------------------------------------------------------------- names
    def _instance_names(self, service: str, instance_id: str) -> tuple[Name, ...]:
        instance = self.registry.get(service, instance_id)
        if instance is None:
            return ()
        origin = self.settings.origin
        return (
            (instance_id, service, *origin),
            (instance_id, *type_name(service, instance.reg.proto, origin)),
        )

    def _shared_names(self, service: str) -> Iterator[Name]:
        """Names drawn from several instances: the service, its tags, DNS-SD types."""
        origin = self.settings.origin
        registry = self.registry
        # From the registry's indexes, not its instances: a change costs O(tags), and a
        # subtype name no instance of that protocol carries collects nothing.
        tags = sorted(registry.tags(service))
        yield (service, *origin)
        for tag in tags:
            yield (tag, service, *origin)
        for proto in registry.protos(service):
            base = type_name(service, proto, origin)
            yield base
            if registry.has_proto(service, proto, tagged=True):
                for tag in tags:
                    yield (f"_{tag}", SUB, *base)

    def _browse_summary(self, service: str) -> tuple[object, ...]:
        """Per protocol: served or not, and the smallest TTL; and the panic verdict."""
        out: list[object] = [self._panic.get(service)]
        for proto in self.registry.protos(service):
            m = self._materials.sd(self.registry, service, proto, None, self.settings.origin)
            out.append((proto, m.count > 0, m.pool(SRV).ttl if m.count else 0, m.panic))
        return tuple(out)

    def _rest_names(self) -> Iterator[Name]:
        origin = self.settings.origin
        yield origin
        yield self.settings.ns_name
        yield (*SERVICES, *origin)
        yield ("b", "_dns-sd", "_udp", *origin)
        yield ("lb", "_dns-sd", "_udp", *origin)
        zone = self.static.zones.get(origin)
        if zone is not None:
            yield from sorted(n for n in zone.nodes if n != origin)

    def _collect(self, name: Name) -> Iterator[Record]:
        """What DNS serves at ``name``: the builder's answer to ANY over TCP, whole."""
        reply = self._ask(name, None)
        if reply.kind is Kind.ANSWER:
            for record in reply.answer:
                if record.owner == name and record.rtype != SOA:
                    yield record
        elif reply.kind is Kind.REFERRAL:
            # A delegation inside the zone: its NS set and the glue below the cut.
            for record in reply.authority:
                if record.rtype == NS:
                    yield record
            for record in reply.additional:
                if record.rtype in (A, AAAA) and is_subdomain(record.owner, self.settings.origin):
                    yield record


def _by_source(name: Name, reply: Reply) -> dict[str, tuple[Record, ...]]:
    """The answer records at ``name`` grouped by the instance each comes from."""
    out: dict[str, list[Record]] = {}
    if reply.kind is Kind.ANSWER:
        sources = reply.sources or ("",) * len(reply.answer)
        for record, source in zip(reply.answer, sources, strict=True):
            if record.owner == name and record.rtype != SOA:
                out.setdefault(source, []).append(record)
    return {source: tuple(records) for source, records in out.items()}


def _order(record: Record) -> tuple[tuple[str, ...], int, str]:
    return (tuple(reversed(record.owner)), record.rtype, record.rdata.text())
