"""HTTP connection limits: header and body deadlines, and a cap on open connections.

aiohttp bounds what it parses (line and header sizes) and closes a kept-alive
connection after ``keepalive_timeout``, but it has no deadline for the request
headers (a client sending one byte a second holds its descriptor for ever)
and no cap on connections. This layer wraps each connection's protocol to add
both, the way nginx's ``client_header_timeout`` and ``worker_connections`` do:

* **header deadline**: from the connection's first byte (or its accept), and
  again from the first byte after each response, the request headers must be
  complete within ``header_timeout``, else the connection is closed;
* **cap**: beyond ``max_connections`` open connections, the one idle the
  longest (between requests, or not yet sent anything) is closed to make room;
  with none idle, the new one is closed. A connection in a request (an event
  stream, a blocking query) is never evicted.

Busy and idle are told by :meth:`ConnectionLimiter.middleware`, which sees
each request start and end. The body deadline is the API's (``Api._body``).

Connections are accepted by :mod:`dnsreg.http.accept`. Also here: the
file-descriptor budget the cap is derived from (:func:`raise_nofile_limit`,
:func:`connection_budget`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from dnsreg.http.accept import AcceptFailures, serve

log = logging.getLogger("dnsreg.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIN_CONNECTIONS = 16


class RateLimitedLog:
    """At most one message per ``every`` seconds per key; the rest are counted into the next."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" (and {suppressed} more like it in the last {self.every:.0f}s)"
        self.logger.log(level, message, *args)


@dataclass(frozen=True, slots=True)
class Budget:
    """What the descriptor limit allows, for the start-up log and /v1/status."""

    soft: int
    hard: int
    reserve: int
    dns_tcp: int
    http_connections: int


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (systemd's default soft
    limit is 1 024, far below what an idle keep-alive crowd needs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def connection_budget(soft: int, hard: int, *, reserve: int, dns_tcp: int, http_max: int) -> Budget:
    """HTTP gets what the descriptor limit leaves after the reserve (health checks, the
    store, logs) and DNS over TCP's own cap, so a crowd of HTTP clients can never take
    the descriptors a health probe needs (a probe failing with EMFILE is no verdict)."""
    left = soft - reserve - dns_tcp
    return Budget(soft, hard, reserve, dns_tcp, max(MIN_CONNECTIONS, min(http_max, left)))


class _Conn:
    __slots__ = ("busy", "header_timer", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.busy = 0
        self.header_timer: asyncio.TimerHandle | None = None


class ConnectionLimiter:
    """Wraps aiohttp's protocol factory; see the module docstring."""

    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._idle: OrderedDict[asyncio.BaseTransport, _Conn] = OrderedDict()
        self.evicted = 0
        self.refused = 0
        self.header_timeouts = 0
        self._log = RateLimitedLog(log)

    @property
    def open(self) -> int:
        return len(self._conns)

    def describe(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "max": self.max_connections,
            "evicted_idle": self.evicted,
            "refused": self.refused,
            "header_timeouts": self.header_timeouts,
        }

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Tracked(self, inner())

    # ------------------------------------------------------------ connections
    def _opened(self, transport: asyncio.Transport) -> bool:
        """Track a new connection; False: it was closed for want of room."""
        if len(self._conns) >= self.max_connections:
            if self._idle:
                _, oldest = self._idle.popitem(last=False)
                self.evicted += 1
                self._log.log(
                    logging.WARNING, "evict",
                    "HTTP: %d connections open (the cap): closed the one idle the longest",
                    len(self._conns),
                )  # fmt: skip
                self._drop(oldest)
                oldest.transport.abort()
            else:
                self.refused += 1
                self._log.log(
                    logging.WARNING, "refuse",
                    "HTTP: %d connections open (the cap), none idle: refused a new one",
                    len(self._conns),
                )  # fmt: skip
                transport.abort()
                return False
        conn = _Conn(transport)
        self._conns[transport] = conn
        self._idle[transport] = conn
        self._arm(conn)
        return True

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.get(transport)
        if conn is not None:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._conns.pop(conn.transport, None)
        self._idle.pop(conn.transport, None)
        if conn.header_timer is not None:
            conn.header_timer.cancel()
            conn.header_timer = None

    def _data(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.get(transport)
        if conn is not None and conn.busy == 0 and conn.header_timer is None:
            self._arm(conn)

    def _arm(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        conn.header_timer = loop.call_later(self.header_timeout, self._header_late, conn)

    def _header_late(self, conn: _Conn) -> None:
        conn.header_timer = None
        if conn.busy == 0 and conn.transport in self._conns:
            self.header_timeouts += 1
            self._log.log(
                logging.INFO, "header",
                "HTTP: closed a connection that sent no complete request headers in %gs",
                self.header_timeout,
            )  # fmt: skip
            self._drop(conn)
            conn.transport.abort()

    # --------------------------------------------------------------- requests
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._conns.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.busy += 1
        self._idle.pop(conn.transport, None)
        if conn.header_timer is not None:
            conn.header_timer.cancel()
            conn.header_timer = None
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            if conn.busy == 0 and conn.transport in self._conns:
                self._idle[conn.transport] = conn  # the newest idle one: last to go


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the limiter told of its life."""

    __slots__ = ("inner", "limiter", "transport")

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol) -> None:
        self.limiter = limiter
        self.inner = inner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(transport)
        self.limiter._opened(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.limiter._data(self.transport)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.limiter._closed(self.transport)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class LimitedSite(web.BaseSite):
    """``web.TCPSite`` whose connections go through a :class:`ConnectionLimiter`."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limiter: ConnectionLimiter,
        *,
        failures: AcceptFailures,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # A burst of connects waits in the kernel's queue rather than being reset.
        super().__init__(runner, backlog=1024, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self.limiter = limiter
        self.failures = failures

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # Accepting in Python (dnsreg.http.accept): a failed accept is counted and logged.
        self._server = await serve(
            self.limiter.factory(server), self._host, self._port,
            name="HTTP", failures=self.failures, ssl_context=self._ssl_context,
            backlog=self._backlog,
        )  # fmt: skip
