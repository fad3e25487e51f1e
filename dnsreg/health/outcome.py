"""What a probe may say about its target, and how many probes a target gets at once.

SPEC §7: health checks are no window into the network. A check's output is
shown by the API, the log and the event stream, so it carries what the
*checker* saw — the status code with its standard reason phrase, or the kind
of failure (``connection refused``, ``timed out``, ``TLS error``) — and never
bytes the target sent: no body, no reason phrase of its own, no banner.

:class:`HostTurns` lets one probe at a time (config ``checks_per_address``)
reach a given host, however many registrations point their checks at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterator

from dnsreg.health.http_probe import ProtocolError


def status_line(status: int) -> str:
    """``HTTP 503 Service Unavailable``: the code with its registered reason phrase
    (RFC 9110 §15), not the server's, which is the server's data."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def error_kind(exc: BaseException) -> str:
    """The kind of failure, in words the checker chose (never the target's bytes)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ConnectionAbortedError | BrokenPipeError):
        return "connection closed"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS error: certificate not trusted"
    if isinstance(exc, ssl.SSLError):
        # ``reason`` is an OpenSSL constant (e.g. WRONG_VERSION_NUMBER): ours, not theirs.
        reason = getattr(exc, "reason", None)
        return f"TLS error: {reason.lower().replace('_', ' ')}" if reason else "TLS error"
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, ProtocolError):
        # Its messages put the offending bytes after the first colon: keep the words only.
        return str(exc).split(":", 1)[0].strip() or "not a valid HTTP response"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, ValueError):
        return "unusable check target"
    return type(exc).__name__


def host_of(host: str) -> str:
    """A target host as a key: IP literals in canonical form, names lower case."""
    host = host.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class HostTurns:
    """At most ``limit`` turns at a time per host (SPEC §7: 1 by default).

    A semaphore per host, dropped when nobody holds or waits for it, so the
    map stays as small as the set of hosts being checked right now.
    """

    def __init__(self, limit: int = 1) -> None:
        if limit < 1:
            raise ValueError("limit: at least 1")
        self.limit = limit
        self._gates: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def turn(self, host: str) -> AsyncIterator[None]:
        entry = self._gates.get(host)
        if entry is None:
            entry = self._gates[host] = (asyncio.Semaphore(self.limit), [0])
        gate, users = entry
        users[0] += 1
        try:
            async with gate:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._gates[host]
