"""The registry: instances, their leases, and one revision counter for every change.

Pure: no clock is read here. Every method that depends on time takes ``now``
(wall-clock seconds), so tests drive leases with a fake clock.

The registry is also the read model the DNS side answers from. For the
embedded store it is the primary copy in memory; for a distributed store it
is a mirror fed by the store's change stream. Either way, callers apply
changes through the methods below and the revision moves by one per change.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from dnsreg.core.errors import Conflict, DnsregError, NotFound
from dnsreg.core.model import CheckStatus, Instance, Registration, Write
from dnsreg.core.write_log import WriteLog

RESERVED_SERVICES = frozenset({"ns"})  # ns.<zone> is the server's own name


class ChangeKind(enum.Enum):
    REGISTERED = "registered"
    REPLACED = "replaced"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    HEALTH = "health"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class Change:
    """One step of the registry's history."""

    kind: ChangeKind
    revision: int
    service: str
    id: str
    before: Instance | None
    after: Instance | None


@dataclass(frozen=True, slots=True)
class ServedSet:
    """The instances DNS hands out for one service, and whether panic mode chose them."""

    instances: tuple[Instance, ...]
    panic: bool


class Registry:
    """All registered instances, indexed by service, tag and id."""

    def __init__(
        self,
        *,
        panic_threshold: float | None = None,
        static_clash: Callable[[str], str | None] | None = None,
    ) -> None:
        self.revision = 0
        self.panic_threshold = panic_threshold
        # Returns the static name a service would shadow, or None.
        self.static_clash = static_clash
        self._services: dict[str, dict[str, Instance]] = {}
        self._tags: dict[str, dict[str, set[str]]] = {}
        # (protocol, has tags) -> instances, per service: DNS-SD names ask this per query.
        self._protos: dict[str, Counter[tuple[str, bool]]] = {}
        self._service_revision: dict[str, int] = {}
        self._leases: list[tuple[float, str, str]] = []  # lazy min-heap of deadlines
        # While a write is staged (see :meth:`stage`): the revision before it and
        # each service revision that :meth:`_bump` overwrote, to put them back.
        self._staged_revision: int | None = None
        self._journal: list[tuple[str, int]] = []
        # Every write to a service's instances, staged and undone ones included, so
        # per-service caches (dns/service_answers) patch what moved instead of rebuilding.
        self._writes = WriteLog()
        # service -> [judged, served]: the panic verdict's two counts (see :meth:`served`),
        # kept per write so judging a service of 100 000 instances costs O(1).
        self._verdicts: dict[str, list[int]] = {}

    # ----------------------------------------------------------------- reads
    def __len__(self) -> int:
        return sum(len(instances) for instances in self._services.values())

    def get(self, service: str, instance_id: str) -> Instance | None:
        return self._services.get(service, {}).get(instance_id)

    def require(self, service: str, instance_id: str) -> Instance:
        instance = self.get(service, instance_id)
        if instance is None:
            raise NotFound(f"instance {instance_id!r} of service {service!r} is not registered")
        return instance

    def services(self) -> Iterable[str]:
        return self._services.keys()

    def has_service(self, service: str) -> bool:
        return service in self._services

    def instances(self, service: str) -> Mapping[str, Instance]:
        return self._services.get(service, {})

    def all_instances(self) -> Iterator[Instance]:
        for instances in self._services.values():
            yield from instances.values()

    def tagged(self, service: str, tags: Iterable[str]) -> list[Instance]:
        """Instances of ``service`` carrying every one of ``tags``."""
        index = self._tags.get(service, {})
        ids: set[str] | None = None
        for tag in tags:
            members = index.get(tag)
            if not members:
                return []
            ids = set(members) if ids is None else ids & members
        instances = self._services.get(service, {})
        return [instances[i] for i in sorted(ids or ())]

    def has_tag(self, service: str, tag: str) -> bool:
        return bool(self._tags.get(service, {}).get(tag))

    def tags(self, service: str) -> Iterable[str]:
        return self._tags.get(service, {}).keys()

    def protos(self, service: str) -> list[str]:
        """The protocols (``tcp``, ``udp``) some instance of ``service`` is registered with."""
        return sorted({proto for proto, _ in self._protos.get(service, ())})

    def has_proto(self, service: str, proto: str, *, tagged: bool = False) -> bool:
        """Some instance of ``service`` has ``proto`` (``tagged``: and carries a tag)."""
        counts = self._protos.get(service)
        return counts is not None and (
            (proto, True) in counts or (not tagged and (proto, False) in counts)
        )

    def epoch(self, service: str) -> int:
        """A number that moves with every write to ``service``'s instances (0: none logged)."""
        return self._writes.epoch(service)

    def touched_since(self, service: str, epoch: int) -> set[str] | None:
        """Ids of ``service`` written since :meth:`epoch` said ``epoch``; None: rebuild."""
        return self._writes.since(service, epoch)

    def service_revision(self, service: str) -> int:
        """Revision of the last change to ``service`` (0 if never seen)."""
        return self._service_revision.get(service, 0)

    def served(
        self,
        service: str,
        candidates: Iterable[Instance] | None = None,
        *,
        panic: bool | None = None,
    ) -> ServedSet:
        """Which of ``candidates`` (default: all instances of ``service``) DNS serves.

        Served = healthy enough and not in maintenance. With a panic threshold,
        when the served share of the whole service falls below it, every live
        instance is served instead (a partial outage must not become a total one).

        The share counts only instances whose health is a finding: one in
        maintenance was withdrawn on purpose, and one whose checks have not run
        yet is neither healthy nor failing (SPEC §4: served once its checks
        pass), so neither tips a service into panic nor is served by it.

        ``panic``: the verdict to apply, when the caller already has it for this
        revision (the kept counts decide it otherwise, in O(1)).
        """
        if candidates is None:
            pool = list(self._services.get(service, {}).values())
        else:
            pool = list(candidates)
        if panic is None:
            panic = self.in_panic(service)
        if panic:
            return ServedSet(tuple(i for i in pool if i.judged), True)
        return ServedSet(_healthy(pool), False)

    def panics(self, judged: int, served: int) -> bool:
        """Panic mode for a service of which ``served`` of ``judged`` instances are served
        (judged: not in maintenance, checks run)."""
        return (
            self.panic_threshold is not None
            and judged > 0
            and served / judged < self.panic_threshold
        )

    def in_panic(self, service: str) -> bool:
        """The whole service's panic verdict at this revision, from the kept counts."""
        if self.panic_threshold is None:
            return False
        counts = self._verdicts.get(service)
        return counts is not None and self.panics(counts[0], counts[1])

    def next_deadline(self) -> float | None:
        """Earliest lease deadline (possibly stale-early; :meth:`expire_due` copes)."""
        return self._leases[0][0] if self._leases else None

    # ---------------------------------------------------------------- writes
    def validate(self, reg: Registration) -> None:
        """Refuse a registration whose names would collide (SPEC §1)."""
        if reg.service in RESERVED_SERVICES:
            raise Conflict(
                f"service name {reg.service!r} is reserved for the server's own records",
                field="service",
            )
        if self.static_clash is not None:
            clash = self.static_clash(reg.service)
            if clash is not None:
                raise Conflict(
                    f"service {reg.service!r} would shadow the static record {clash}",
                    field="service",
                )
        if reg.id in reg.tags:
            raise Conflict(f"instance id {reg.id!r} is also one of its tags", field="tags")
        for tag in reg.tags:
            other = self.get(reg.service, tag)
            if other is not None and other.reg.id != reg.id:
                raise Conflict(
                    f"tag {tag!r} equals the id of another instance of {reg.service!r}",
                    field="tags",
                )
        tag_index = self._tags.get(reg.service, {})
        holders = tag_index.get(reg.id, set()) - {reg.id}
        if holders:
            raise Conflict(
                f"instance id {reg.id!r} equals a tag of instance(s) {sorted(holders)} "
                f"of {reg.service!r}",
                field="id",
            )

    def register(self, reg: Registration, now: float) -> Change:
        """Add or replace an instance; always renews its lease."""
        self.validate(reg)
        before = self.get(reg.service, reg.id)
        revision = self._bump(reg.service)
        checks: tuple[CheckStatus, ...] = ()
        if before is not None and before.reg.checks == reg.checks:
            checks = before.checks  # same checks: keep their results
        elif reg.checks:
            checks = tuple(CheckStatus() for _ in reg.checks)
        after = Instance(
            reg=reg,
            deadline=now + reg.ttl if reg.ttl > 0 else None,
            registered_at=before.registered_at if before is not None else now,
            revision=revision,
            checks=checks,
            maintenance=before.maintenance if before is not None else None,
            # Re-registering renews the lease (SPEC §3) just as a heartbeat does.
            renewed=before is not None,
        )
        if before is not None:
            self._unindex(before)
        self._put(after)
        kind = ChangeKind.REPLACED if before is not None else ChangeKind.REGISTERED
        return Change(kind, revision, reg.service, reg.id, before, after)

    def restore(self, instance: Instance, now: float) -> None:
        """Load an instance from the store after a restart, with a fresh full lease.

        Not a change: the revision it came with is the store's, set by
        :meth:`set_revision`.
        """
        ttl = instance.reg.ttl
        # A lease that made it across a restart counts as established for
        # self-preservation: if the registry comes back with its network still
        # down, the guard must protect these, and none has had a chance to renew.
        renewed = instance.with_changes(deadline=now + ttl if ttl > 0 else None, renewed=True)
        existing = self.get(instance.reg.service, instance.reg.id)
        if existing is not None:
            self._unindex(existing)
        self._put(renewed)
        self._service_revision[instance.reg.service] = max(
            self._service_revision.get(instance.reg.service, 0), instance.revision
        )

    def set_revision(self, revision: int) -> None:
        self.revision = max(self.revision, revision)

    def heartbeat(self, service: str, instance_id: str, now: float) -> Instance:
        """Renew a lease. Not a change: nothing DNS shows moves."""
        instance = self.require(service, instance_id)
        if instance.reg.ttl > 0:
            instance = instance.with_changes(deadline=now + instance.reg.ttl, renewed=True)
            self._services[service][instance_id] = instance
        return instance

    def deregister(self, service: str, instance_id: str) -> Change:
        return self._remove(service, instance_id, ChangeKind.DEREGISTERED)

    def apply_all(self, writes: Iterable[Write], now: float) -> list[Change]:
        """Register and deregister several instances, all or none (one DNS UPDATE).

        Each change still takes its own revision (the revision counts changes);
        if one write is refused (a Conflict, a NotFound) the ones before it are
        taken back here, revisions included, and the error propagates.
        """
        writes = list(writes)
        revision = self.revision
        saved = {w.service: self._service_revision.get(w.service, 0) for w in writes}
        journal = len(self._journal)
        done: list[Change] = []
        try:
            for w in writes:
                if isinstance(w, Registration):
                    done.append(self.register(w, now))
                else:
                    done.append(self.deregister(w.service, w.id))
        except DnsregError:
            self._undo(done)
            for service, previous in saved.items():
                if previous:
                    self._service_revision[service] = previous
                else:
                    self._service_revision.pop(service, None)
            del self._journal[journal:]
            self.revision = revision
            raise
        return done

    def expire_due(
        self, now: float, *, held: bool = False, limit: int | None = None
    ) -> list[Change]:
        """Remove every instance whose lease deadline is at or before ``now``
        (at most ``limit`` of them: the caller expires a crowd in batches).

        ``held``: self-preservation holds expiry (SPEC §3); only leases that were
        never renewed expire then (SPEC §7: they do not count toward the guard,
        so they expire as usual), the renewed ones stay due.
        """
        changes: list[Change] = []
        kept: list[tuple[float, str, str]] = []
        while self._leases and self._leases[0][0] <= now:
            if limit is not None and len(changes) >= limit:
                break
            entry = heapq.heappop(self._leases)
            _, service, instance_id = entry
            instance = self.get(service, instance_id)
            if instance is None or instance.deadline is None:
                continue  # gone or no longer leased: a stale heap entry
            if instance.deadline > now:
                # Renewed since this entry was pushed: track the new deadline.
                heapq.heappush(self._leases, (instance.deadline, service, instance_id))
                continue
            if held and instance.renewed:
                kept.append(entry)
                continue
            changes.append(self._remove(service, instance_id, ChangeKind.EXPIRED))
        for entry in kept:
            heapq.heappush(self._leases, entry)
        return changes

    def first_due(self, now: float) -> Instance | None:
        """An instance whose lease ended at or before ``now``, or None; removes nothing.

        Drops heap entries left behind by heartbeats and removals on the way, so
        a caller can tell cheaply whether anything is really due.
        """
        while self._leases and self._leases[0][0] <= now:
            _, service, instance_id = self._leases[0]
            instance = self.get(service, instance_id)
            if instance is not None and instance.deadline is not None:
                if instance.deadline <= now:
                    return instance
                heapq.heapreplace(self._leases, (instance.deadline, service, instance_id))
            else:
                heapq.heappop(self._leases)
        return None

    def leases(self) -> Iterator[tuple[float, float]]:
        """(deadline, ttl) of every leased instance."""
        for instances in self._services.values():
            for i in instances.values():
                if i.deadline is not None:
                    yield i.deadline, i.reg.ttl

    def guarded_leases(self) -> Iterator[tuple[float, float]]:
        """(deadline, ttl) of the leases self-preservation counts: those renewed at
        least once (SPEC §7), so registrations that never renew cannot trip it."""
        for instances in self._services.values():
            for i in instances.values():
                if i.deadline is not None and i.renewed:
                    yield i.deadline, i.reg.ttl

    def due_for_expiry(self, now: float) -> list[Instance]:
        """Instances whose lease ended at or before ``now`` (without removing them)."""
        return [i for i in self.all_instances() if i.deadline is not None and i.deadline <= now]

    def set_maintenance(self, service: str, instance_id: str, reason: str | None) -> Change | None:
        before = self.require(service, instance_id)
        if before.maintenance == reason:
            return None
        return self._update(before, ChangeKind.MAINTENANCE, maintenance=reason)

    def set_check_status(
        self, service: str, instance_id: str, index: int, status: CheckStatus
    ) -> Change | None:
        """Record a check result. A change (new revision) only when health moves."""
        before = self.require(service, instance_id)
        checks = list(before.checks)
        if index >= len(checks):
            return None  # the instance was replaced with fewer checks meanwhile
        previous = checks[index].state
        checks[index] = status
        if previous is status.state:
            # Same state: keep the record fresh; nothing DNS or a watcher sees moved.
            after = before.with_changes(checks=tuple(checks))
            self._services[service][instance_id] = after
            # A first run in the state that was the default: no longer pending, now judged.
            self._recount(before, after)
            return None
        return self._update(before, ChangeKind.HEALTH, checks=tuple(checks))

    def apply(self, change: Change) -> None:
        """Apply a change made elsewhere (a distributed store's stream) to this mirror.

        The mirror's current copy is what gets replaced, whatever ``change.before``
        says (the stream is the authority). Leases are the backend's: a mirrored
        deadline is informational and never enters the expiry heap, which only
        :meth:`expire_due` drains (a mirror never calls it, so pushes would leak).
        """
        existing = self.get(change.service, change.id)
        if existing is not None:
            self._drop(existing)
        if change.after is not None:
            self._put(change.after, track_lease=False)
        self.revision = max(self.revision, change.revision)
        self._service_revision[change.service] = max(
            self._service_revision.get(change.service, 0), change.revision
        )

    # ------------------------------------------------------- staged writes
    # A durable store must not show a change before it is committed, yet the
    # registry's methods are what decide a change (validation, revisions,
    # lease heap). So a store stages: it runs the methods, takes the changes
    # they return, puts everything back with :meth:`unstage` (synchronously:
    # no reader on the event loop sees the in-between), commits the changes,
    # and only then :meth:`redo`-es them. A failed commit leaves no trace: no
    # revision burnt, no event, no answer moved.
    def stage(self) -> None:
        """Start recording what the following writes overwrite."""
        self._staged_revision = self.revision
        self._journal = []

    def unstage(self, changes: Iterable[Change]) -> None:
        """Undo the changes made since :meth:`stage`, invisibly (no revision, no change)."""
        self._undo(changes)
        for service, revision in reversed(self._journal):
            if revision:
                self._service_revision[service] = revision
            else:
                self._service_revision.pop(service, None)
        if self._staged_revision is not None:
            self.revision = self._staged_revision
        self._staged_revision = None
        self._journal = []

    def redo(self, change: Change) -> None:
        """Apply a committed change that :meth:`unstage` took back.

        A heartbeat that came while the commit ran renewed the current copy's
        lease; a change that keeps the same registration keeps that lease.
        """
        current = self.get(change.service, change.id)
        after = change.after
        if current is not None:
            if (
                after is not None
                and current.reg is after.reg
                and current.deadline is not None
                and after.deadline is not None
                and current.deadline > after.deadline
            ):
                after = after.with_changes(deadline=current.deadline)
            self._drop(current)
        if after is not None:
            self._put(after)
        self.revision = max(self.revision, change.revision)
        self._service_revision[change.service] = max(
            self._service_revision.get(change.service, 0), change.revision
        )

    # -------------------------------------------------------------- internals
    def _undo(self, changes: Iterable[Change]) -> None:
        """Put back what ``changes`` replaced (the data only; revisions are the caller's)."""
        for change in reversed(list(changes)):
            current = self.get(change.service, change.id)
            if current is not None:
                self._drop(current)
            if change.before is not None:
                # Tracked again: an expiry popped the lease's heap entry (a
                # duplicate entry is harmless, the heap is lazy).
                self._put(change.before)

    def _drop(self, instance: Instance) -> None:
        self._unindex(instance)
        self._delete(instance.reg.service, instance.reg.id)

    def _delete(self, service: str, instance_id: str) -> None:
        instances = self._services[service]
        self._count(instances.pop(instance_id), -1)
        self._touch(service, instance_id)
        if not instances:
            del self._services[service]
            self._writes.forget(service)

    def _touch(self, service: str, instance_id: str) -> None:
        self._writes.touch(service, instance_id, len(self._services.get(service, ())))

    def _bump(self, service: str) -> int:
        if self._staged_revision is not None:
            self._journal.append((service, self._service_revision.get(service, 0)))
        self.revision += 1
        self._service_revision[service] = self.revision
        return self.revision

    def _put(self, instance: Instance, *, track_lease: bool = True) -> None:
        reg = instance.reg
        instances = self._services.setdefault(reg.service, {})
        replaced = instances.get(reg.id)
        if replaced is not None:
            self._count(replaced, -1)
        instances[reg.id] = instance
        self._count(instance, 1)
        self._touch(reg.service, reg.id)
        self._protos.setdefault(reg.service, Counter())[(reg.proto, bool(reg.tags))] += 1
        tags = self._tags.setdefault(reg.service, {})
        for tag in reg.tags:
            tags.setdefault(tag, set()).add(reg.id)
        if track_lease and instance.deadline is not None:
            heapq.heappush(self._leases, (instance.deadline, reg.service, reg.id))

    def _count(self, instance: Instance, sign: int) -> None:
        """Add (1) or take out (-1) ``instance`` from its service's panic counts."""
        if not instance.judged:
            return  # not judged: withdrawn on purpose, or its checks have not run
        counts = self._verdicts.setdefault(instance.reg.service, [0, 0])
        counts[0] += sign
        if instance.served:
            counts[1] += sign
        if counts[0] <= 0:
            del self._verdicts[instance.reg.service]

    def _recount(self, before: Instance, after: Instance) -> None:
        self._count(before, -1)
        self._count(after, 1)

    def _unindex(self, instance: Instance) -> None:
        reg = instance.reg
        protos = self._protos.get(reg.service)
        if protos is not None:
            key = (reg.proto, bool(reg.tags))
            protos[key] -= 1
            if protos[key] <= 0:
                del protos[key]
                if not protos:
                    del self._protos[reg.service]
        tags = self._tags.get(reg.service)
        if tags is None:
            return
        for tag in reg.tags:
            members = tags.get(tag)
            if members is not None:
                members.discard(reg.id)
                if not members:
                    del tags[tag]
        if not tags:
            del self._tags[reg.service]

    def _remove(self, service: str, instance_id: str, kind: ChangeKind) -> Change:
        before = self.require(service, instance_id)
        self._unindex(before)
        self._delete(service, instance_id)
        revision = self._bump(service)
        return Change(kind, revision, service, instance_id, before, None)

    def _update(self, before: Instance, kind: ChangeKind, **fields: object) -> Change:
        revision = self._bump(before.reg.service)
        after = before.with_changes(revision=revision, **fields)
        self._services[before.reg.service][before.reg.id] = after
        self._recount(before, after)
        self._touch(before.reg.service, before.reg.id)
        return Change(kind, revision, before.reg.service, before.reg.id, before, after)


def _healthy(pool: list[Instance]) -> tuple[Instance, ...]:
    # ``Instance.served`` without the property calls for the common case (no checks):
    # DNS asks this of every instance of a service once per revision of it.
    return tuple(i for i in pool if i.maintenance is None and (not i.checks or i.health.served))
