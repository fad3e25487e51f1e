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
from collections.abc import Generator, Iterable, Iterator
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


class _Delta:
    """What one journal entry deletes and adds, net: a record that goes and comes back
    within the entry (or comes and goes) is in neither (RFC 1995 §4 lists differences)."""

    __slots__ = ("added", "deleted")

    def __init__(self) -> None:
        self.deleted: set[Record] = set()
        self.added: set[Record] = set()

    def gone(self, records: Iterable[Record]) -> None:
        _toggle(records, undo=self.added, into=self.deleted)

    def came(self, records: Iterable[Record]) -> None:
        _toggle(records, undo=self.deleted, into=self.added)


def _toggle(records: Iterable[Record], *, undo: set[Record], into: set[Record]) -> None:
    """Each record undoes its opposite move in this entry, or else is one more move."""
    for record in records:
        if record in undo:
            undo.discard(record)
        else:
            into.add(record)


# Records a transfer's snapshot copies per step (a few ms).
SNAPSHOT_STEP = 50_000


@dataclass(slots=True)
class _Work:
    """A service being asked again: instances left, and what to ask them with."""

    ids: list[str]
    every: bool  # all its instances: RRset TTLs are expected to move
    panic: bool
    revision: int  # the service revision and write-log epoch this work catches up to
    epoch: int
    shared: set[Name]
    # A pass over every instance: the TTLs each shared name had when first asked in it.
    # If one moves before the pass ends, the instances already asked carry the old TTL.
    seen: dict[Name, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    # Shared names it had earlier in the work (a tag that came and went meanwhile).
    earlier: set[Name] = field(default_factory=set)


@dataclass(slots=True)
class _Shared:
    """A name many instances make records at: each one's part, and the records counted
    (two instances at one address make one A record: it goes when the last one does)."""

    ttls: tuple[tuple[int, int], ...] = ()
    by_id: dict[str, tuple[Record, ...]] = field(default_factory=dict)
    counts: Counter[Record] = field(default_factory=Counter)

    def put(self, source: str, records: tuple[Record, ...], delta: _Delta) -> None:
        """``source``'s part is now ``records``; what left the name and what came to it
        go in ``delta``."""
        counts = self.counts
        gone: list[Record] = []
        for record in self.by_id.pop(source, ()):
            counts[record] -= 1
            if not counts[record]:
                del counts[record]
                gone.append(record)
        delta.gone(gone)
        if records:
            self.by_id[source] = records
        new = [record for record in records if not counts[record]]
        for record in records:
            counts[record] += 1
        delta.came(new)


class Journal:
    """The current zone, by part and name, and the differences of the last ``limit`` revisions."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        static: StaticZones,
        *,
        limit: int = 1000,
        build: bool = True,
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
        # Services being asked again (sliced observe), and what went and came meanwhile.
        self._work: dict[str, _Work] = {}
        self._delta = _Delta()
        self._rest_moved = True
        self._built = False  # the first snapshot is done
        self.readers = 0  # snapshots being copied (see :meth:`snapshot`)
        self.soa = self._current_soa()
        self.diffs: deque[Diff] = deque()
        if build:
            self.observe()

    # ------------------------------------------------------------- reading
    def records(self) -> Iterator[Record]:
        """Every record of the zone but the SOA, at :attr:`revision`."""
        for nodes in self._nodes.values():
            for records in nodes.values():
                yield from records
        for part in self._parts.values():
            yield from part.counts

    def snapshot(self, step: int = SNAPSHOT_STEP) -> Generator[list[Record], None, None]:
        """:meth:`records` copied in lists of about ``step`` records (a transfer's one
        revision, taken over a few turns of the loop: 800 000 records are ~50 ms).

        While it runs, :meth:`observe` changes nothing (it returns False): what it
        hands out stays one revision. Close it (or run it to the end) to release.
        """
        chain = itertools.chain.from_iterable
        self.readers += 1
        try:
            out: list[Record] = []
            for nodes in list(self._nodes.values()):
                names = list(nodes.values())
                for at in range(0, len(names), step // 4):  # ~4 records a name
                    out.extend(chain(names[at : at + step // 4]))
                    if len(out) >= step:
                        yield out
                        out = []
            for part in list(self._parts.values()):
                out.extend(part.counts)
                if len(out) >= step:
                    yield out
                    out = []
            yield out
        finally:
            self.readers -= 1

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

    def observe(self, static: StaticZones | None = None, *, budget: int | None = None) -> bool:
        """Catch up with the registry (and new zone files): one journal entry if it moved.

        ``budget``: instances to ask again in this call at most; False: not caught up
        yet (call again: what changed meanwhile joins the same entry). None: all.
        """
        if static is not None:
            self.static = static
        if self.readers:
            return False  # a transfer is copying the zone: it stays as it is meanwhile
        registry = self.registry
        if (
            self._built
            and registry.revision == self.revision
            and self.static is self._static_seen
            and not self._work
        ):
            return True
        if not self._refresh(budget):
            return False
        delta, self._delta = self._delta, _Delta()
        deleted = tuple(sorted(delta.deleted, key=_order))
        added = tuple(sorted(delta.added, key=_order))
        if not self._built:
            self._built = True  # the first snapshot: nothing to journal against
        elif registry.revision != self.revision:
            self.diffs.append(Diff(self.revision, registry.revision, deleted, added))
            # ixfr_journal counts revisions (SPEC §2): drop entries starting further back.
            while self.diffs and registry.revision - self.diffs[0].from_revision > self.limit:
                self.diffs.popleft()
        else:
            # New zone files without a registry change: the serial cannot move, so a
            # secondary that is already at this serial must fetch the whole zone.
            self.diffs.clear()
        self.revision = registry.revision
        self.soa = self._current_soa()
        return True

    def _refresh(self, budget: int | None) -> bool:
        """Ask again what moved, ``budget`` instances at most; True once caught up."""
        self._plan()
        spent = 0
        while self._work:
            if budget is not None and spent >= budget:
                return False
            service, work = next(iter(self._work.items()))
            room = len(work.ids) if budget is None else max(1, budget - spent)
            take, work.ids = work.ids[:room], work.ids[room:]
            spent += len(take)
            self._ask_instances(service, work, take)
            if not work.ids:
                del self._work[service]
                self._finish(service, work)
        if self._rest_moved or self.static is not self._static_seen:
            rest = list(self._rest_names())
            self._update(_REST, rest, set(rest))
            self._rest_moved = False
        self._static_seen = self.static
        return True

    def _plan(self) -> None:
        """What to ask again: the services that moved, and which of their instances."""
        registry = self.registry
        touched, self._touched = self._touched, {}
        live = set(registry.services())
        known = {p for p in self._nodes if p != _REST} | set(self._part_revision)
        for gone in [p for p in known | set(self._work) if p not in live]:
            self._forget(gone)
        for service in live:
            revision = registry.service_revision(service)
            work = self._work.get(service)
            if work is None and self._part_revision.get(service) == revision:
                continue
            if work is not None and work.revision == revision:
                continue
            panic = registry.in_panic(service)
            # Which instances moved: the registry's own log says (whoever wrote), else
            # what :meth:`touch` was told, else every instance of the service.
            since = work.epoch if work is not None else self._epochs.get(service)
            ids = registry.touched_since(service, since) if since is not None else None
            if ids is None:
                ids = touched.get(service)
            every = ids is None or panic != (
                work.panic if work is not None else self._panic.get(service)
            )
            shared = set(self._shared_names(service))
            if every:
                ids = self._everyone(service, shared)
            assert ids is not None
            epoch = registry.epoch(service)
            if work is None:
                self._work[service] = _Work(sorted(ids), every, panic, revision, epoch, shared)
            else:  # more changes to a service under way: they join its work
                work.ids = sorted(set(work.ids) | ids)
                if every and not work.every:
                    work.every = True
                    work.seen.clear()
                work.panic, work.revision, work.epoch = panic, revision, epoch
                work.earlier |= work.shared
                work.shared = shared

    def _forget(self, gone: str) -> None:
        """A service that has no instance left: all its names go."""
        delta = self._delta
        for records in self._nodes.pop(gone, {}).values():
            delta.gone(records)
        work = self._work.pop(gone, None)
        names = set(self._shared.get(gone, ()))
        if work is not None:
            names |= work.shared | work.earlier
        for name in names:
            part = self._parts.pop(name, None)
            if part is not None:
                delta.gone(part.counts)
        self._part_revision.pop(gone, None)
        self._own.pop(gone, None)
        self._panic.pop(gone, None)
        self._shared.pop(gone, None)
        self._epochs.pop(gone, None)
        if self._browsed.pop(gone, None) is not None:
            self._rest_moved = True

    def _ask_instances(self, service: str, work: _Work, ids: list[str]) -> None:
        """Ask again the names of ``ids``, and their part of the service's shared names."""
        own = self._own.setdefault(service, {})
        for instance_id in ids:
            old_names = own.pop(instance_id, ())
            names = self._instance_names(service, instance_id)
            if names:
                own[instance_id] = names
            self._update(service, set(old_names) | set(names))
        # Shared names are kept per instance (no tag equals an instance's id: the
        # registry refuses that, so none of these is also an instance's own name).
        members = frozenset(ids)
        for name in work.shared:
            if not self._update_part(name, members, work):
                # An RRset's TTL moved (RFC 2181 §5.2): every record of it changes, so
                # every instance of the service is asked again.
                every = self._everyone(service, work.shared) | set(ids) | set(work.ids)
                work.ids, work.every = sorted(every), True
                work.seen.clear()
                return

    def _everyone(self, service: str, shared: set[Name]) -> set[str]:
        """Every instance that has or had records of ``service``: its instances now, and
        those kept under its names (gone ones whose records must go)."""
        ids = set(self._own.get(service, {})) | set(self.registry.instances(service))
        work = self._work.get(service)
        earlier = work.earlier | work.shared if work is not None else set()
        for name in shared | earlier | self._shared.get(service, set()):
            part = self._parts.get(name)
            if part is not None:
                ids.update(part.by_id)
        return ids

    def _finish(self, service: str, work: _Work) -> None:
        for name in work.shared:
            part = self._parts.get(name)
            if part is not None and not part.counts:
                del self._parts[name]
        before = self._shared.get(service, set()) | work.earlier
        for name in (before - work.shared) & self._parts.keys():
            self._delta.gone(self._parts.pop(name).counts)
        self._shared[service] = work.shared
        self._part_revision[service] = work.revision
        self._epochs[service] = work.epoch
        self._panic[service] = work.panic
        browsed = self._browse_summary(service)
        if self._browsed.get(service) != browsed:
            self._browsed[service] = browsed
            self._rest_moved = True

    def _update(self, part: str, names: Iterable[Name], keep: set[Name] | None = None) -> None:
        """Ask ``names`` again; with ``keep``, every other name of the part goes."""
        delta = self._delta
        nodes = self._nodes.setdefault(part, {})
        for name in names:
            new = frozenset(self._collect(name))
            old = nodes.get(name, frozenset())
            delta.gone(old - new)
            delta.came(new - old)
            if new:
                nodes[name] = new
            else:
                nodes.pop(name, None)
        if keep is not None:
            for name in [n for n in nodes if n not in keep]:
                delta.gone(nodes.pop(name))

    def _update_part(self, name: Name, members: frozenset[str], work: _Work) -> bool:
        """``members``' part of the kept name ``name``; False: its RRsets' TTLs moved
        (outside a pass over every instance, or twice in one), nothing was changed."""
        reply = self._ask(name, members)
        part = self._parts.get(name)
        if work.every:
            if work.seen.setdefault(name, reply.ttls) != reply.ttls:
                return False
            if part is None:
                part = self._parts[name] = _Shared(reply.ttls)
            part.ttls = reply.ttls
        elif part is None:  # new: only instances that changed can have made records here
            part = self._parts[name] = _Shared(reply.ttls)
        elif reply.ttls != part.ttls:
            return False
        delta = self._delta
        found = _by_source(name, reply)
        for source in members:
            part.put(source, found.pop(source, ()), delta)
        for source, records in found.items():  # none expected: records of no instance
            part.put(source, records, delta)
        return True

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
