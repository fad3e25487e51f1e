"""The DNS server's metrics, read from the responder's counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dns.rcode
import dns.rdatatype
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dnsreg.dns.responder import NO_QTYPE, Responder
from dnsreg.dns.rrl import RateLimiter
from dnsreg.dns.server import TcpListener


def _qtype(code: int) -> str:
    return "none" if code == NO_QTYPE else dns.rdatatype.to_text(dns.rdatatype.RdataType.make(code))


def _rcode(code: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(code))
    except ValueError:
        return str(code)


class ResponderCollector(Collector):
    """Counters the responder keeps anyway; nothing is added to the hot path."""

    def __init__(self, responder: Callable[[], Responder | None]) -> None:
        self.responder = responder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        responder = self.responder()
        if responder is None:
            return
        responses = CounterMetricFamily(
            "dnsreg_dns_responses",
            "DNS responses sent, by question type and rcode (cache hits included)",
            labels=["qtype", "rcode"],
        )
        for (qtype, rcode), count in sorted(responder.counts_by_type().items()):
            responses.add_metric([_qtype(qtype), _rcode(rcode)], count)
        yield responses
        # hits / (hits + misses) is the answer cache's hit ratio.
        yield CounterMetricFamily(
            "dnsreg_dns_cache_hits", "Queries answered from the answer cache",
            value=sum(responder.cache.hits_by_type().values()),
        )  # fmt: skip
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
        materials = responder.materials
        builds = CounterMetricFamily(
            "dnsreg_dns_material_builds",
            "Answer material built from nothing, by how: inline, or in slices between "
            "other work (a large service; its queries wait for it)",
            labels=["how"],
        )
        builds.add_metric(["inline"], materials.builds - materials.sliced)
        builds.add_metric(["sliced"], materials.sliced)
        yield builds
        yield CounterMetricFamily(
            "dnsreg_dns_material_patches", "Answer material patched for a change of its service",
            value=materials.patches,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "dnsreg_dns_material_instances", "Instances referenced by kept answer material",
            value=materials.instances,
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
