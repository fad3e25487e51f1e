"""Prometheus metrics (prometheus-client), each server with its own registry.

The registry, the store and the HTTP API report here; the DNS server and the
health checker bring their own collectors (:mod:`dnsreg.dns.metrics`,
:mod:`dnsreg.health.metrics`), which the composition root adds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from dnsreg import __version__
from dnsreg.core.registry import Registry
from dnsreg.http.observe import HttpMetrics
from dnsreg.store import Store
from dnsreg.store.census import Census, count_leases

# ``*_created`` series (one per counter and histogram) are the process start time over
# and over; Prometheus derives resets itself. Process-wide switch, so set once here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: a group commit of SQLite in WAL mode takes ~0.1-5 ms, a full fsync more,
# an etcd transaction a network round trip.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _RegistryCollector(Collector):
    """Reads the registry at scrape time (nothing on the write path)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "dnsreg_revision", "Registry revision", value=self.registry.revision
        )
        yield GaugeMetricFamily(
            "dnsreg_instances", "Registered instances", value=len(self.registry)
        )
        yield GaugeMetricFamily(
            "dnsreg_services", "Services with at least one instance",
            value=sum(1 for _ in self.registry.services()),
        )  # fmt: skip


class _StoreCollector(Collector):
    """Self-preservation, as the store's expiry guard last assessed it."""

    def __init__(self, store: Callable[[], Store | None]) -> None:
        self.store = store
        self.census: Census | None = None  # counted by Metrics.refresh before a render

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        store = self.store()
        if store is not None:
            guard = store.self_preservation()
            yield GaugeMetricFamily(
                "dnsreg_expiry_paused",
                "1 while self-preservation holds lease expiry (too many leases lapsing at once)",
                value=1 if guard["active"] else 0,
            )
            # Counted for this scrape, not taken from the last assessment: the guard
            # assesses only when a lease is due, so its number stood still once the
            # last one left. Counted in slices beforehand (Metrics.refresh).
            now = store.clock()
            if self.census is not None:
                yield GaugeMetricFamily(
                    "dnsreg_leases_lapsing",
                    "Leases overdue or more than half through their TTL without a heartbeat",
                    value=self.census.lapsing,
                )
            if store.expiry_guard is not None:
                yield GaugeMetricFamily(
                    "dnsreg_leases_recently_expired",
                    "Leases expired within their own TTL (self-preservation counts them too)",
                    value=store.expiry_guard.recent(now),
                )


class Metrics:
    def __init__(self, registry: Registry, store: Callable[[], Store | None]) -> None:
        self.registry = CollectorRegistry()
        # The process itself (RSS, CPU, open and maximum descriptors, start time), the
        # interpreter's version and its garbage collector, on this server's registry.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        Info("dnsreg_build", "The running dnsreg", registry=self.registry).info(
            {"version": __version__}
        )
        self.http = HttpMetrics(self.registry)
        self.store_commit = Histogram(
            "dnsreg_store_commit_duration_seconds",
            "Time to make one batch of changes durable in the store",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registrations = Counter(
            "dnsreg_registrations", "Register calls accepted", registry=self.registry
        )
        self.heartbeats = Counter(
            "dnsreg_heartbeats", "Heartbeats accepted", registry=self.registry
        )
        self.registry.register(_RegistryCollector(registry))
        self._store_collector = _StoreCollector(store)
        self.registry.register(self._store_collector)
        self._store = store

    def add(self, collector: Collector) -> None:
        """Report what ``collector`` yields too (another feature's metrics)."""
        self.registry.register(collector)

    async def refresh(self) -> None:
        """Count what a scrape reports that needs a walk of every instance, in slices
        that yield the loop (a walk in ``collect`` would hold it: 20-60 ms at 100 000)."""
        store = self._store()
        if store is not None:
            census = await count_leases(store.registry, store.clock())
            self._store_collector.census = census

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
