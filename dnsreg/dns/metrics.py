"""The DNS server's metrics, read from the responder's counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dnsreg.dns.responder import Responder
from dnsreg.dns.rrl import RateLimiter
from dnsreg.dns.server import TcpListener
from dnsreg.dns.wire import Rcode


class ResponderCollector(Collector):
    """Counters the responder keeps anyway; nothing is added to the hot path."""

    def __init__(self, responder: Callable[[], Responder | None]) -> None:
        self.responder = responder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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


class DnsGuardCollector(Collector):
    """Response rate limiting and TCP fairness: what was held back, and how."""

    def __init__(
        self,
        limiter: Callable[[], RateLimiter | None],
        tcp: Callable[[], TcpListener | None],
    ) -> None:
        self.limiter = limiter
        self.tcp = tcp

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        limiter = self.limiter()
        if limiter is not None:
            yield CounterMetricFamily(
                "dnsreg_rrl_dropped", "UDP responses dropped by rate limiting",
                value=limiter.dropped,
            )  # fmt: skip
            yield CounterMetricFamily(
                "dnsreg_rrl_slipped", "Rate-limited UDP responses sent empty with TC=1",
                value=limiter.slipped,
            )  # fmt: skip
        tcp = self.tcp()
        if tcp is not None:
            yield GaugeMetricFamily(
                "dnsreg_dns_tcp_connections", "Open DNS TCP connections",
                value=len(tcp.connections),
            )  # fmt: skip
            refused = CounterMetricFamily(
                "dnsreg_dns_tcp_refused", "DNS TCP connections refused", labels=["reason"]
            )
            refused.add_metric(["per_client"], tcp.refused_per_client)
            refused.add_metric(["other"], tcp.refused - tcp.refused_per_client)
            yield refused
            yield CounterMetricFamily(
                "dnsreg_dns_tcp_evicted", "Idle DNS TCP connections closed to admit new ones",
                value=tcp.evicted,
            )  # fmt: skip
