"""Prometheus metrics (prometheus-client), each server with its own registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from dnsreg.health import Checker, PanicWatch
from dnsreg.registry import Registry
from dnsreg.responder import Responder
from dnsreg.store import Store
from dnsreg.wire import Rcode


class _LiveCollector(Collector):
    """Reads the registry and the responder's counters at scrape time (nothing on the hot path)."""

    def __init__(self, registry: Registry, responder: Callable[[], Responder | None]) -> None:
        self.registry = registry
        self.responder = responder

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
        responder = self.responder()
        if responder is None:
            return
        queries = CounterMetricFamily(
            "dnsreg_dns_responses", "DNS responses sent, by rcode", labels=["rcode"]
        )
        for code, count in sorted(responder.counts().items()):
            name = Rcode(code).name if code in Rcode._value2member_map_ else str(code)
            queries.add_metric([name], count)
        yield queries
        yield CounterMetricFamily(
            "dnsreg_dns_cache_misses", "Cacheable queries answered by the builder",
            value=responder.cache.misses,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "dnsreg_dns_cache_entries", "Replies held in the answer cache",
            value=len(responder.cache.entries),
        )  # fmt: skip
        yield CounterMetricFamily(
            "dnsreg_dns_malformed", "Packets that did not parse as a query",
            value=responder.malformed,
        )  # fmt: skip


class _HealthCollector(Collector):
    """Health checks, panic mode and self-preservation, read at scrape time."""

    def __init__(
        self,
        store: Callable[[], Store | None],
        checker: Callable[[], Checker | None],
        panic: Callable[[], PanicWatch | None],
    ) -> None:
        self.store = store
        self.checker = checker
        self.panic = panic

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
        checker = self.checker()
        if checker is not None:
            results = CounterMetricFamily(
                "dnsreg_health_checks", "Health check runs, by result", labels=["result"]
            )
            for result in ("passing", "warning", "critical"):
                results.add_metric([result], checker.results[result])
            yield results
            yield GaugeMetricFamily(
                "dnsreg_health_checks_scheduled", "Health checks with a running schedule",
                value=checker.scheduled,
            )  # fmt: skip
            yield GaugeMetricFamily(
                "dnsreg_health_checks_in_flight", "Health checks running right now",
                value=checker.in_flight,
            )  # fmt: skip
        panic = self.panic()
        if panic is not None:
            yield GaugeMetricFamily(
                "dnsreg_services_in_panic",
                "Services below the panic threshold, served in full",
                value=len(panic.in_panic),
            )


class Metrics:
    def __init__(self, registry: Registry, responder: Callable[[], Responder | None]) -> None:
        self.registry = CollectorRegistry()
        self.registrations = Counter(
            "dnsreg_registrations", "Register calls accepted", registry=self.registry
        )
        self.heartbeats = Counter(
            "dnsreg_heartbeats", "Heartbeats accepted", registry=self.registry
        )
        self.registry.register(_LiveCollector(registry, responder))

    def watch_health(
        self,
        store: Callable[[], Store | None],
        checker: Callable[[], Checker | None],
        panic: Callable[[], PanicWatch | None],
    ) -> None:
        self.registry.register(_HealthCollector(store, checker, panic))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
