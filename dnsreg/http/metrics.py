"""Prometheus metrics (prometheus-client), each server with its own registry.

The registry, the store and the HTTP API report here; the DNS server and the
health checker bring their own collectors (:mod:`dnsreg.dns.metrics`,
:mod:`dnsreg.health.metrics`), which the composition root adds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from dnsreg.core.registry import Registry
from dnsreg.store import Store


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

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        store = self.store()
        if store is not None:
            guard = store.self_preservation()
            yield GaugeMetricFamily(
                "dnsreg_expiry_paused",
                "1 while self-preservation holds lease expiry (too many leases lapsing at once)",
                value=1 if guard["active"] else 0,
            )
            yield GaugeMetricFamily(
                "dnsreg_leases_lapsing",
                "Leases lapsing at the last self-preservation assessment",
                value=guard.get("lapsing", 0),
            )


class Metrics:
    def __init__(self, registry: Registry, store: Callable[[], Store | None]) -> None:
        self.registry = CollectorRegistry()
        self.registrations = Counter(
            "dnsreg_registrations", "Register calls accepted", registry=self.registry
        )
        self.heartbeats = Counter(
            "dnsreg_heartbeats", "Heartbeats accepted", registry=self.registry
        )
        self.registry.register(_RegistryCollector(registry))
        self.registry.register(_StoreCollector(store))

    def add(self, collector: Collector) -> None:
        """Report what ``collector`` yields too (another feature's metrics)."""
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
