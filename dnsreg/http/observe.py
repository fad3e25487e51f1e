"""HTTP request metrics and the optional access log, from one aiohttp access logger.

aiohttp calls the access logger once per request, after the response went out, with
the time it took: the one place where status, bytes sent and duration are all known
(a middleware sees neither the bytes of a streamed reply nor a 400 the parser sent).
Requests are counted by route *template* (``/v1/services/{service}``), never the raw
path: one series per route, whatever names clients send.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

access = logging.getLogger("dnsreg.access")

# Seconds: a heartbeat takes ~0.2 ms, a register waits for a group commit (~1-10 ms),
# blocking queries and event streams last up to minutes (their own route label).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
)  # fmt: skip
UNMATCHED = "unmatched"  # no route: 404s for unknown paths and requests that did not parse
# HTTP allows any token as a method; a label takes only these, or every made-up method a
# scanner sends would be a new series (RFC 9110 §9: the registered ones dnsreg may see).
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "dnsreg_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "dnsreg_http_request_duration_seconds",
            "Time from the request's arrival to the last byte of the reply, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def route_template(request: BaseRequest) -> str:
    """The route's template; requests that never reached the router count as unmatched."""
    try:
        match_info = getattr(request, "match_info", None)
    except AssertionError:  # a web.Request that never reached the router (bad request line)
        match_info = None
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else UNMATCHED


def access_logger_class(metrics: HttpMetrics, *, log_requests: bool) -> type[AbstractAccessLogger]:
    """The class aiohttp's AppRunner instantiates (it takes a class, not an object)."""
    # Label sets are few (routes × methods × statuses), so the map stays small.
    children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            route = route_template(request)
            status = response.status
            method = request.method if request.method in METHODS else "other"
            key = (route, method, status)
            series = children.get(key)
            if series is None:  # .labels() costs a few µs a call: once per label set
                series = children[key] = (
                    metrics.requests.labels(route, method, str(status)),
                    metrics.latency.labels(route),
                )
            series[0].inc()
            series[1].observe(time)
            if log_requests and access.isEnabledFor(logging.INFO):
                remote = request.remote or "-"
                nbytes = response.body_length
                access.info(
                    "%s %s %s %d %d %.1fms", remote, request.method, request.path_qs, status,
                    nbytes, time * 1000,
                    extra={
                        "client": remote, "method": request.method, "path": request.path_qs,
                        "route": route, "status": status, "bytes": nbytes,
                        "duration_ms": round(time * 1000, 3),
                    },
                )  # fmt: skip

    return AccessLogger
