"""Answer material kept per service revision, and built in slices when large. Pure.

A :class:`~dnsreg.dns.service_answers.Material` is patched when its service
changes (a change costs the instances it touched), but sometimes it has to be
built from nothing: the first query after a start, after an eviction, after a
burst of more than :data:`PATCH_LIMIT` writes, or when the service's panic
verdict flips. For a service of 50 000 instances that is tens of milliseconds
of Python, and a DNS server must not hold its event loop that long (issue 11:
~20 ms at 100 000 instances).

So a build is a :class:`Build`: a snapshot of the candidate instances, taken
through in slices of :data:`BUILD_SLICE`. A cache given a ``budget`` builds
at most that many instances inline; beyond it, :meth:`MaterialCache.get`
raises :class:`MaterialPending` and the caller (the responder's listeners,
through ``dns/deferred``) steps the build between other work, then asks
again. A cache without a budget (the pure tests, the transfer journal,
``explain``) builds inline, as before. The snapshot is of the instances at
one epoch of the service; writes that land while the build runs are patched
in by the next :meth:`MaterialCache.get`, exactly as for a kept material.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnsreg.core.errors import DnsregError
from dnsreg.core.model import Instance
from dnsreg.core.names import Name
from dnsreg.core.registry import Registry
from dnsreg.dns.record_memo import RecordMemo
from dnsreg.dns.service_answers import Material, served_now

# Entries: a few per service (whole, tags, DNS-SD) for thousands of services.
DEFAULT_MAX_ENTRIES = 16384
# A material more writes behind than this is built again rather than patched.
PATCH_LIMIT = 4096
# Instances referenced by all cached material together: bounds memory on hostile key sets.
# A 100 000-instance service needs a few materials at once (whole, DNS-SD, a tag).
DEFAULT_MAX_INSTANCES = 600_000
# Instances one slice of a build takes (about 1-3 ms of CPU on a 2-core CI machine).
BUILD_SLICE = 2048
# Instances the servers' cache builds inline (app.py sets it): a few ms.
INLINE_BUILD = 4096

PoolKey = tuple[str, ...]
CacheKey = tuple[str, PoolKey, Name]


class MaterialPending(DnsregError):
    """Flow control, not a failure: the material a query needs is being built.

    Raised from deep in the answer builder and caught by the responder, which
    hands ``build`` to whoever steps builds and answers the query once it is
    done. Nothing was changed by the attempt.
    """

    def __init__(self, build: Build) -> None:
        super().__init__(f"answer material for {build.material.service} is being built")
        self.build = build


@dataclass(slots=True, eq=False)
class Build:
    """A material being filled from a snapshot of its candidates, one slice at a time."""

    key: CacheKey
    material: Material
    todo: list[Instance]
    panic: bool  # the service's verdict at the snapshot: which instances are served
    at: int = 0
    done: bool = False

    @property
    def size(self) -> int:
        return len(self.todo)


class MaterialCache:
    """Material per (service, pool key), valid while the service's revision stands.

    When the revision moved, the registry says which instances were written
    since (:meth:`Registry.touched_since`) and the material is patched with
    just those, given a ``member`` test for the key; without one, too far
    behind, or when the service's panic verdict flipped, it is built again.
    Bounded twice: in entries and in instances referenced, oldest first (a dict
    keeps insertion order; a hit moves its entry to the end). Builds in
    progress count against the instance bound too; when it is full, a build
    runs inline rather than queue without bound.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        budget: int | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_instances = max_instances
        # Instances a build may take inline; None: any (every build is inline).
        self.budget = budget
        self.entries: dict[CacheKey, Material] = {}
        self.building: dict[CacheKey, Build] = {}
        self.instances = 0
        self.builds = 0
        self.sliced = 0  # builds that were too large to run inline
        self.patches = 0
        self.memo = RecordMemo()

    def get(
        self,
        registry: Registry,
        service: str,
        key: PoolKey,
        candidates: Callable[[], Iterable[Instance] | None],
        origin: Name,
        member: Callable[[Instance], bool] | None = None,
    ) -> Material:
        """The material of ``candidates`` (None: the whole service) of ``service``.

        ``member``: whether an instance of the service is one of ``candidates``,
        so a change can be patched in rather than the whole set asked again.
        Raises :class:`MaterialPending` when it must be built and is larger
        than the budget.
        """
        stamp = registry.service_revision(service)
        entries = self.entries
        cache_key = (service, key, origin)  # a zone and its alt_domain: one each
        panic = registry.in_panic(service)
        found = entries.pop(cache_key, None)
        if found is not None:
            epoch = registry.epoch(service)
            if found.stamp == stamp and found.epoch == epoch:
                entries[cache_key] = found
                return found
            self.instances -= len(found.served)
            if member is not None and found.panic == panic:
                touched = registry.touched_since(service, found.epoch)
                if touched is not None and len(touched) <= PATCH_LIMIT:
                    self._patch(found, registry, service, touched, member)
                    found.stamp, found.epoch = stamp, epoch
                    self.patches += 1
                    self._make_room(len(found.served))
                    entries[cache_key] = found
                    self.instances += len(found.served)
                    return found
        pending = self.building.get(cache_key)
        if pending is not None:
            raise MaterialPending(pending)
        material = Material(
            stamp, {}, panic, origin, registry.epoch(service), memo=self.memo, service=service
        )
        material.open_pools()
        pool = candidates()
        todo = list(registry.instances(service).values() if pool is None else pool)
        build = Build(cache_key, material, todo, panic)
        self.builds += 1
        if self.budget is None or len(todo) <= self.budget or not self._room_to_queue(build):
            self.step(build, len(todo))
            return material
        self.sliced += 1
        self.building[cache_key] = build
        self.instances += build.size
        raise MaterialPending(build)

    def single(self, registry: Registry, instance: Instance, origin: Name) -> Material:
        """The material of one instance's own names, made afresh and not kept: one entry
        per instance name asked would evict the materials of whole services (a client
        walking 16 000 instance names would make a 50 000-instance service rebuild)."""
        service = instance.reg.service
        panic = registry.in_panic(service)
        material = Material(
            registry.service_revision(service), {}, panic, origin, registry.epoch(service),
            memo=RecordMemo(max_sets=8, per_set=8), service=service,
        )  # fmt: skip
        material.open_pools()
        if instance.judged if panic else served_now(instance):
            material.extend([instance])
        return material

    def step(self, build: Build, limit: int = BUILD_SLICE) -> bool:
        """Take the next ``limit`` instances of ``build`` in; True once it is installed."""
        if build.done:
            return True
        part = build.todo[build.at : build.at + limit]
        build.at += len(part)
        if build.panic:  # Registry.served: panic mode serves every judged instance
            build.material.extend([i for i in part if i.judged])
        else:  # served_now, inline: a call per instance would double a build's cost
            build.material.extend(
                [i for i in part if i.maintenance is None and (not i.checks or i.health.served)]
            )
        if build.at < len(build.todo):
            return False
        build.done = True
        if self.building.get(build.key) is build:
            del self.building[build.key]
            self.instances -= build.size
        build.todo = []
        self._install(build.key, build.material)
        return True

    def abandon(self, build: Build) -> None:
        """Forget ``build`` unfinished (its stepping failed): the next query starts afresh."""
        if self.building.get(build.key) is build:
            del self.building[build.key]
            self.instances -= build.size
        build.todo = []
        build.done = True  # its waiters ask again, and a new build starts

    def _room_to_queue(self, build: Build) -> bool:
        return self.instances + build.size <= self.max_instances

    def _install(self, cache_key: CacheKey, material: Material) -> None:
        old = self.entries.pop(cache_key, None)
        if old is not None:
            self.instances -= len(old.served)
        size = len(material.served)
        self._make_room(size)
        if self.instances + size > self.max_instances:
            return  # builds in progress hold the room: answered from, not kept
        self.entries[cache_key] = material
        self.instances += size

    def sd(
        self, registry: Registry, service: str, proto: str, tag: str | None, origin: Name
    ) -> Material:
        """Served instances of ``service`` over ``proto`` (with ``tag``), for DNS-SD names."""
        if tag is None:
            return self.get(
                registry,
                service,
                ("sd", proto),
                lambda: [i for i in registry.instances(service).values() if i.reg.proto == proto],
                origin,
                lambda i: i.reg.proto == proto,
            )
        return self.get(
            registry,
            service,
            ("sd", proto, tag),
            lambda: [i for i in registry.tagged(service, (tag,)) if i.reg.proto == proto],
            origin,
            lambda i: i.reg.proto == proto and tag in i.reg.tags,
        )

    @staticmethod
    def _patch(
        material: Material,
        registry: Registry,
        service: str,
        touched: Iterable[str],
        member: Callable[[Instance], bool],
    ) -> None:
        for instance_id in touched:
            before = material.served.get(instance_id)
            now = registry.get(service, instance_id)
            # Panic mode serves every judged instance (Registry.served).
            keep = now is not None and (now.judged if material.panic else served_now(now))
            after = now if now is not None and keep and member(now) else None
            if before is not None or after is not None:
                material.patch(before, after)

    def _make_room(self, incoming: int) -> None:
        entries = self.entries
        while entries and (
            len(entries) >= self.max_entries or self.instances + incoming > self.max_instances
        ):
            oldest = next(iter(entries))
            self.instances -= len(entries.pop(oldest).served)
