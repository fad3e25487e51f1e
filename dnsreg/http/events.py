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

import msgspec
from aiohttp import web

from dnsreg.core.changelog import (
    DEFAULT_CAPACITY,
    ChangeLog,
    Event,
    blocking_timeout,
    encode_change,
    event_data,
    parse_index,
    parse_wait,
)
from dnsreg.core.names import check_label
from dnsreg.core.registry import Change
from dnsreg.http.sse import frame

log = logging.getLogger("dnsreg.events")
_encoder = msgspec.json.Encoder()

INDEX_HEADER = "X-Dnsreg-Index"
DEFAULT_KEEPALIVE = 15.0  # well under the 60 s idle timeout of common proxies
RECONNECT_MS = 1000  # the `retry:` hint for browsers' EventSource

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ShareKey = tuple[str, tuple[tuple[str, str], ...]]
SHARE_FOR = 0.5  # seconds a rendered blocking answer may be handed to other waiters
SHARE_MAX = 1024  # rendered answers kept at once
WAKE_SLICE = 16  # waiters woken per turn of the loop (each renders its answer, ~0.3 ms)
FRAMES_PER_WRITE = 500  # SSE frames encoded between two yields of the loop (~5 ms)


def event_frame(event: Event) -> bytes:
    """The SSE frame of one change, encoded once and only if some stream carries it.

    Most changes are never streamed (no watcher of that prefix); encoding every
    one eagerly cost more than the rest of a registration's bookkeeping.
    """
    if event.encoded is None:
        data = _encoder.encode(event_data(event.change)).decode()
        event.encoded = frame(id=event.revision, event=event.kind, data=data)
    return event.encoded


def reset_frame(head: int, since: int, floor: int) -> bytes:
    """Tells a resuming client that history it asked for is gone: re-list, then go on."""
    data = {"revision": head, "since": since, "oldest": floor}
    return frame(id=head, event="reset", data=_encoder.encode(data).decode())


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
        # Waiters by the service they read, and by the prefix they watch.
        self._by_service: dict[str, set[asyncio.Future[bool]]] = {}
        self._by_prefix: dict[str, set[asyncio.Future[bool]]] = {}
        self._shared: dict[_ShareKey, tuple[float, int, bytes, dict[str, str]]] = {}

    @property
    def waiters(self) -> int:
        """Futures parked right now (streams and blocking queries between changes)."""
        return sum(len(w) for w in self._by_service.values()) + sum(
            len(w) for w in self._by_prefix.values()
        )

    # ------------------------------------------------------------ feeding
    def on_change(self, change: Change) -> None:
        """Store listener: remember the change and wake whoever it concerns."""
        if not self.log.append(encode_change(change)):
            return
        self._shared.clear()  # rendered answers describe the previous revision
        service = change.service
        _wake(self._by_service.pop(service, None))
        for prefix in [p for p in self._by_prefix if service.startswith(p)]:
            _wake(self._by_prefix.pop(prefix))

    async def close(self, _app: web.Application | None = None) -> None:
        """Release every waiter: streams end, blocking queries answer with what they have."""
        self.closed = True
        for waiters in [*self._by_service.values(), *self._by_prefix.values()]:
            _wake(waiters)
        self._by_service.clear()
        self._by_prefix.clear()

    # ------------------------------------------------------------ waiting
    async def _next(self, hold: float, *, service: str | None, prefix: str) -> bool:
        """Sleep until a change under ``service``/``prefix``; False after ``hold`` seconds.

        One future and one timer per wait, resolved directly by the change (or
        the timer): cheaper than a shared future behind shield() and timeout(),
        which matters when one change wakes a thousand streams.
        """
        if self.closed:
            return True
        table, key = (
            (self._by_service, service) if service is not None else (self._by_prefix, prefix)
        )
        waiters = table.get(key)
        if waiters is None:
            waiters = table[key] = set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        waiters.add(future)
        timer = loop.call_later(hold, _resolve, future, False)
        try:
            return await future
        finally:
            timer.cancel()
            waiters.discard(future)
            if not waiters and table.get(key) is waiters:
                del table[key]

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
        key: _ShareKey | None = None
        if request.method in ("GET", "HEAD") and request.path != "/v1/events":
            index_text = request.query.get("index")
            if index_text is not None:
                index = parse_index(index_text)
                hold = blocking_timeout(parse_wait(request.query.get("wait")), self.rng)
                service, prefix = self._scope(request)
                await self.wait(index, hold, service=service, prefix=prefix)
                if request.method == "GET" and request.path.startswith("/v1/services"):
                    key = (request.path, _query_key(request))
                    shared = self._shared_response(key)
                    if shared is not None:
                        return shared
        # The revision this read saw: taken before the handler runs, so a change the
        # handler misses is never hidden behind a newer index.
        seen = self.log.head
        response = await handler(request)
        if INDEX_HEADER not in response.headers and not response.prepared:
            response.headers[INDEX_HEADER] = str(seen)
        if key is not None and seen == self.log.head:
            self._share(key, response)
        return response

    def _shared_response(self, key: _ShareKey) -> web.Response | None:
        """The answer rendered for an identical blocking read woken by the same change.

        One change wakes every waiter on a service at once (a thundering herd):
        they get the same bytes, rendered once. Entries live only while the
        revision stands (``on_change`` drops them) and for :data:`SHARE_FOR`
        seconds, so a lease deadline in a shared answer is at most that old.
        """
        entry = self._shared.get(key)
        if entry is None:
            return None
        at, status, body, headers = entry
        if asyncio.get_running_loop().time() - at > SHARE_FOR:
            del self._shared[key]
            return None
        return web.Response(body=body, status=status, headers=headers)

    def _share(self, key: _ShareKey, response: web.StreamResponse) -> None:
        if (
            isinstance(response, web.Response)
            and response.status == 200
            and isinstance(response.body, bytes)
            and not response.prepared
        ):
            if len(self._shared) >= SHARE_MAX:
                self._shared.clear()  # bounded: distinct queries must not grow memory
            headers = {k: v for k, v in response.headers.items() if k != "Content-Length"}
            at = asyncio.get_running_loop().time()
            self._shared[key] = (at, response.status, response.body, headers)

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
                # A replay of a long backlog (10 000 events: ~90 ms to encode) goes out
                # in slices with the loop yielded between them: DNS waits on this loop.
                events = batch.events
                for start in range(0, len(events), FRAMES_PER_WRITE):
                    if start:
                        await asyncio.sleep(0)
                    chunk = events[start : start + FRAMES_PER_WRITE]
                    await response.write(b"".join(event_frame(e) for e in chunk))
                continue
            if idle:
                # A comment keeps proxies from closing the stream; the id moves the
                # client's cursor past changes outside its prefix, so a reconnect
                # after a quiet spell does not ask for history that has been evicted.
                await response.write(frame(comment="keepalive", id=cursor))
            if self.closed or _gone(request):
                return
            idle = not await self._next(self.keepalive, service=None, prefix=prefix)


def _resolve(future: asyncio.Future[bool], woken: bool) -> None:
    if not future.done():
        future.set_result(woken)


def _wake(waiters: set[asyncio.Future[bool]] | None) -> None:
    if waiters:
        _wake_slice(list(waiters), 0)


def _wake_slice(futures: list[asyncio.Future[bool]], start: int) -> None:
    """Wake ``WAKE_SLICE`` waiters now and the next ones on the loop's next turn.

    A woken waiter renders and writes its answer in one step; a thousand woken at
    once would run back to back in one turn of the loop (~250 ms at 100 000
    instances, DNS unanswered meanwhile). A slice per turn lets the loop poll its
    sockets and run its timers in between.
    """
    end = start + WAKE_SLICE
    for future in futures[start:end]:
        _resolve(future, True)
    if end < len(futures):
        asyncio.get_running_loop().call_soon(_wake_slice, futures, end)


def _query_key(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The query without the blocking parameters: what the answer depends on."""
    return tuple(sorted((k, v) for k, v in request.query.items() if k not in ("index", "wait")))


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
