"""Change notification over HTTP: blocking queries and the ``/v1/events`` stream.

The hub is fed by ``Store.subscribe``: every change lands in a :class:`ChangeLog`
and wakes exactly the waiters it concerns, through futures keyed by service
name and by prefix. Nothing here polls; a waiter sleeps until a change (or its
own timeout, or shutdown) resolves its future.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from aiohttp import web

from dnsreg.changelog import (
    DEFAULT_CAPACITY,
    ChangeLog,
    blocking_timeout,
    encode_change,
    parse_index,
    parse_wait,
    reset_frame,
)
from dnsreg.names import check_label
from dnsreg.registry import Change
from dnsreg.sse import frame

log = logging.getLogger("dnsreg.events")

INDEX_HEADER = "X-Dnsreg-Index"
DEFAULT_KEEPALIVE = 15.0  # well under the 60 s idle timeout of common proxies
RECONNECT_MS = 1000  # the `retry:` hint for browsers' EventSource

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EventHub:
    """Recent changes plus the futures that wake blocked readers."""

    def __init__(
        self,
        revision: int,
        *,
        capacity: int = DEFAULT_CAPACITY,
        keepalive: float = DEFAULT_KEEPALIVE,
        rng: random.Random | None = None,
    ) -> None:
        self.log = ChangeLog(capacity, floor=revision)
        self.keepalive = keepalive
        self.rng = rng or random.Random()
        self.closed = False
        self.streams = 0  # open /v1/events streams
        self.blocked = 0  # blocking queries waiting right now
        self._by_service: dict[str, asyncio.Future[None]] = {}
        self._by_prefix: dict[str, asyncio.Future[None]] = {}

    # ------------------------------------------------------------ feeding
    def on_change(self, change: Change) -> None:
        """Store listener: remember the change and wake whoever it concerns."""
        if not self.log.append(encode_change(change)):
            return
        service = change.service
        future = self._by_service.pop(service, None)
        if future is not None and not future.done():
            future.set_result(None)
        for prefix in [p for p in self._by_prefix if service.startswith(p)]:
            future = self._by_prefix.pop(prefix)
            if not future.done():
                future.set_result(None)

    async def close(self, _app: web.Application | None = None) -> None:
        """Release every waiter: streams end, blocking queries answer with what they have."""
        self.closed = True
        for future in [*self._by_service.values(), *self._by_prefix.values()]:
            if not future.done():
                future.set_result(None)
        self._by_service.clear()
        self._by_prefix.clear()

    # ------------------------------------------------------------ waiting
    def _future(self, table: dict[str, asyncio.Future[None]], key: str) -> asyncio.Future[None]:
        future = table.get(key)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            table[key] = future
        return future

    async def _next(self, hold: float, *, service: str | None, prefix: str) -> bool:
        """Sleep until a change under ``service``/``prefix``; False on timeout."""
        if self.closed:
            return True
        future = (
            self._future(self._by_service, service)
            if service is not None
            else self._future(self._by_prefix, prefix)
        )
        try:
            async with asyncio.timeout(hold):
                # Shielded: the future is shared, a waiter's timeout must not cancel it.
                await asyncio.shield(future)
        except TimeoutError:
            return False
        return True

    async def wait(
        self, index: int, hold: float, *, service: str | None = None, prefix: str = ""
    ) -> None:
        """Return once something under ``service``/``prefix`` changed after ``index``,
        or after ``hold`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        self.blocked += 1
        try:
            while not self.closed and not self.log.moved_since(
                index, service=service, prefix=prefix
            ):
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._next(
                    remaining, service=service, prefix=prefix
                ):
                    return
        finally:
            self.blocked -= 1

    # --------------------------------------------------------------- HTTP
    @web.middleware
    async def blocking_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """``?index=N&wait=D`` on any GET holds it until a relevant change (SPEC §5)."""
        if request.method in ("GET", "HEAD") and request.path != "/v1/events":
            index_text = request.query.get("index")
            if index_text is not None:
                index = parse_index(index_text)
                hold = blocking_timeout(parse_wait(request.query.get("wait")), self.rng)
                service, prefix = self._scope(request)
                await self.wait(index, hold, service=service, prefix=prefix)
        # The revision this read saw: taken before the handler runs, so a change the
        # handler misses is never hidden behind a newer index.
        seen = self.log.head
        response = await handler(request)
        if INDEX_HEADER not in response.headers and not response.prepared:
            response.headers[INDEX_HEADER] = str(seen)
        return response

    @staticmethod
    def _scope(request: web.Request) -> tuple[str | None, str]:
        """Which changes matter to this read: one service, a prefix, or everything."""
        service = request.match_info.get("service")
        if service is not None:
            return check_label(service, field="service"), ""
        if request.path == "/v1/services":
            return None, request.query.get("prefix", "").lower()
        return None, ""

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/events[?prefix=&since=N]``: one SSE frame per change."""
        prefix = request.query.get("prefix", "").lower()
        # A reconnecting EventSource re-sends the original URL plus Last-Event-ID,
        # which is the newer of the two: the header wins.
        since_text = request.headers.get("Last-Event-ID") or request.query.get("since")
        since = parse_index(since_text.strip()) if since_text else None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
                INDEX_HEADER: str(self.log.head),
            }
        )
        await response.prepare(request)
        self.streams += 1
        try:
            await self._pump(request, response, prefix, since)
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        finally:
            self.streams -= 1
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _pump(
        self, request: web.Request, response: web.StreamResponse, prefix: str, since: int | None
    ) -> None:
        if since is None:
            # Start from now; the id-only frame gives the client a cursor to resume from.
            cursor = self.log.head
            await response.write(frame(retry_ms=RECONNECT_MS, id=cursor))
        else:
            cursor = since
            await response.write(frame(retry_ms=RECONNECT_MS))
        idle = False
        while True:
            batch = self.log.after(cursor, prefix)
            if batch.reset:
                await response.write(reset_frame(self.log.head, cursor, self.log.floor))
                cursor = batch.cursor
                continue
            cursor = batch.cursor
            if batch.events:
                await response.write(b"".join(e.frame for e in batch.events))
                continue
            if idle:
                # A comment keeps proxies from closing the stream; the id moves the
                # client's cursor past changes outside its prefix, so a reconnect
                # after a quiet spell does not ask for history that has been evicted.
                await response.write(frame(comment="keepalive", id=cursor))
            if self.closed or _gone(request):
                return
            idle = not await self._next(self.keepalive, service=None, prefix=prefix)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
