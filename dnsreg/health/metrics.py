"""The health checker's metrics, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dnsreg.health.checker import Checker, PanicWatch


class HealthCollector(Collector):
    """Health checks and panic mode, read at scrape time."""

    def __init__(
        self,
        checker: Callable[[], Checker | None],
        panic: Callable[[], PanicWatch | None],
    ) -> None:
        self.checker = checker
        self.panic = panic

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
