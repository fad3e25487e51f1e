"""TCP listeners that accept in Python, so a failed accept is seen, counted and paced.

``loop.create_server`` accepts in the loop's own code. uvloop's does it in C
and drops an accept that failed for want of descriptors (EMFILE, ENFILE,
ENOBUFS) without a word: the SPEC's "failed accepts are logged" could not
hold, and a level-triggered listener whose queue never empties spins. Here
the listening socket is our own: on each wake-up at most ``ACCEPT_BATCH``
connections are taken with ``sock.accept()`` and handed to the loop with
``loop.connect_accepted_socket`` (TLS included: the handshake runs in the
loop's transport as before). A failure for want of resources is counted in
``dnsreg_accept_failures_total{listener,errno}``, logged at WARNING at most
once per 10 s per listener, and accepting pauses for ``PAUSE`` seconds: the
kernel keeps the queue (the backlog) meanwhile, and connections are taken
again once descriptors are free.

A client that went away before its accept (ECONNABORTED) or during its TLS
handshake is no error of ours: counted nowhere, logged at debug.

The HTTP site uses this; the composition root hands :func:`serve` to the DNS
server for DNS over TCP (the features do not import each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from dnsreg.core.rate_limit import LogBudget

log = logging.getLogger("dnsreg.accept")

ACCEPT_BATCH = 32  # connections taken per wake-up before other work runs (~60 µs each)
PAUSE = 1.0  # seconds without accepting after a failure for want of resources
# A client that vanished between its SYN and our accept: not our failure.
_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EPERM})

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class AcceptFailures:
    """Failed accepts of every listener: the counter and the paced log line."""

    def __init__(self, every: float = 10.0) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.paused = 0  # pauses of accepting, every listener
        self.every = every
        self._budgets: dict[str, LogBudget] = {}

    def failed(self, listener: str, exc: OSError) -> None:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        key = (listener, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.paused += 1
        budget = self._budgets.setdefault(listener, LogBudget(burst=1, per=self.every))
        allowed, held = budget.allow(time.monotonic())
        if not allowed:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        more = f" ({held} more in the last {self.every:g}s)" if held else ""
        log.warning(
            "%s: cannot accept a connection: %s (open-files limit %d)%s; "
            "not accepting for %gs, waiting connections stay queued",
            listener, exc.strerror or exc, soft, more, PAUSE,
        )  # fmt: skip

    def total(self) -> int:
        return sum(self.counts.values())


class AcceptCollector(Collector):
    def __init__(self, failures: AcceptFailures) -> None:
        self.failures = failures

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "dnsreg_accept_failures",
            "Connections the kernel queued that could not be accepted (EMFILE and kin)",
            labels=["listener", "errno"],
        )
        for (listener, code), count in sorted(self.failures.counts.items()):
            family.add_metric([listener, code], count)
        yield family


class Listener(asyncio.AbstractServer):
    """One listening socket; what ``loop.create_server`` returns, as far as we use it."""

    def __init__(
        self,
        sock: socket.socket,
        factory: ProtocolFactory,
        *,
        name: str,
        failures: AcceptFailures,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.sock: socket.socket | None = sock
        self.sockets = [sock]
        self.factory = factory
        self.name = name
        self.failures = failures
        self.ssl_context = ssl_context
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self._handing: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE:
                    log.debug("%s: a client left before its accept: %s", self.name, exc)
                    continue
                # EMFILE and kin (LOCAL_RESOURCE_ERRNOS), or anything unexpected:
                # counted, logged with pacing, and a pause rather than a spin.
                self.failures.failed(self.name, exc)
                self._pause()
                return
            self._hand_over(conn)

    def _pause(self) -> None:
        if self.sock is None or self._resume is not None:
            return
        self._loop.remove_reader(self.sock.fileno())
        self._resume = self._loop.call_later(PAUSE, self._go_on)

    def _go_on(self) -> None:
        self._resume = None
        if self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def _hand_over(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            # What the loop's own server does: replies are small, do not wait on Nagle.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._connect(conn))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl_context)
        except (OSError, ssl.SSLError, EOFError) as exc:
            # A client that hung up, or spoke no TLS: its business, logged at debug.
            log.debug("%s: connection dropped during its set-up: %s", self.name, exc)
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise

    # ------------------------------------------------------- AbstractServer
    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._handing):
            task.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        if self._handing:
            await asyncio.gather(*self._handing, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self.sock is not None

    async def start_serving(self) -> None:
        """Serving starts in the constructor."""

    async def serve_forever(self) -> None:
        """Serves from the constructor on; returns once the listener is closed."""
        await self._closed.wait()


async def serve(
    factory: ProtocolFactory,
    host: str,
    port: int,
    *,
    name: str,
    failures: AcceptFailures,
    ssl_context: ssl.SSLContext | None = None,
    backlog: int = 1024,
) -> Listener:
    """Listen on ``host:port`` (port 0: a free one) and serve connections with ``factory``."""
    # A name (localhost) is resolved as the loop's create_server would; its first
    # address is the one listened on.
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        # A burst of connects waits in the kernel's queue rather than being reset.
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return Listener(sock, factory, name=name, failures=failures, ssl_context=ssl_context)
