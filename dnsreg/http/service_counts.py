"""The per-service counts of ``GET /v1/services``, without stalling the event loop.

Counting a 100 000-instance service walks every instance (health is derived
from the check results): ~0.4 s in one go, during which DNS waits. So counts
are computed in slices with the loop yielded between them, over a snapshot of
the instances taken at the start (instances are immutable values), and kept
per service revision: an unchanged service is never counted twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dnsreg.core.registry import Registry

SLICE = 2_000  # instances (or services) between two yields of the loop


class ServiceCounts:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[str, tuple[int, dict[str, int | bool]]] = {}

    async def listing(self, prefix: str) -> tuple[int, dict[str, dict[str, int | bool]]]:
        """(revision seen, service -> counts) for every service starting with ``prefix``."""
        revision = self.registry.revision
        names = sorted(s for s in self.registry.services() if s.startswith(prefix))
        out: dict[str, dict[str, int | bool]] = {}
        work = 0  # instances counted (or services looked at) since the last yield
        for service in names:
            if work >= SLICE:
                work = 0
                await asyncio.sleep(0)
            if self.registry.has_service(service):  # not gone while we yielded
                cached = self._cache.get(service)
                if cached is None or cached[0] != self.registry.service_revision(service):
                    # Many small services add up (400 of 100: ~35 ms in one go).
                    work += len(self.registry.instances(service))
                work += 1
                out[service] = await self.counts(service)
        for gone in [s for s in self._cache if not self.registry.has_service(s)]:
            del self._cache[gone]
        return revision, out

    async def counts(self, service: str) -> dict[str, int | bool]:
        registry = self.registry
        revision = registry.service_revision(service)
        cached = self._cache.get(service)
        if cached is not None and cached[0] == revision:
            return dict(cached[1])
        instances = list(registry.instances(service).values())
        counts: dict[str, Any] = {
            "instances": 0, "passing": 0, "warning": 0, "critical": 0, "maintenance": 0,
        }  # fmt: skip
        healthy = judged = judged_healthy = 0
        for n, instance in enumerate(instances):
            if n and n % SLICE == 0:
                await asyncio.sleep(0)
            health = instance.health
            counts["instances"] += 1
            counts[health.value] += 1
            maintenance = instance.maintenance is not None
            counts["maintenance"] += maintenance
            served = not maintenance and health.served
            healthy += served
            if not maintenance and not instance.pending:  # the share panic mode judges by
                judged += 1
                judged_healthy += served
        panic = registry.panics(judged, judged_healthy)
        # In panic mode every judged instance is served (Registry.served).
        counts["served"] = judged if panic else healthy
        counts["panic"] = panic
        if registry.service_revision(service) == revision:
            self._cache[service] = (revision, counts)
        return dict(counts)
