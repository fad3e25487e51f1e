"""The DNS listeners: UDP and TCP on one address. Only bytes in, bytes out.

UDP uses its own non-blocking socket with ``loop.add_reader`` and drains many
datagrams per wake-up: CPython's stock datagram transport allocates a 256 KiB
buffer per ``recvfrom``, which glibc can turn into an mmap/munmap per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from dnsreg.dns import udp_batch as mmsg
from dnsreg.dns.rrl import RateLimiter, Verdict, network_of_host, slip_reply

log = logging.getLogger("dnsreg.dns")

Handler = Callable[..., bytes | None]  # (data, *, tcp) -> reply or None


class MessageStream(Protocol):
    """Replies made a batch at a time (a large zone transfer, dns/xfr_out)."""

    done: bool

    def next_batch(self) -> list[bytes]:
        """The next messages (maybe none yet); :attr:`done` once all were given."""
        ...

    def close(self) -> None:
        """Stop early (the client went)."""
        ...


# What answers one message: a reply, several (a zone transfer), a stream of them, or None.
Reply = bytes | list[bytes] | MessageStream | None
# TCP: (data, peer address) -> what answers it
StreamHandler = Callable[[bytes, str], Reply]
# (protocol factory, host, port) -> a listening server; the composition root may hand in
# one that accepts in Python (failed accepts counted and logged); else the loop's own.
Listen = Callable[[Callable[[], asyncio.Protocol], str, int], Awaitable[asyncio.AbstractServer]]
# Asked about a message the handler answered with None (dns/deferred): (data, client
# address, tcp) -> what will answer it (a DNS UPDATE once the store has the change, a
# query once its service's answer material is built, a transfer once the journal has
# caught up), or None: nothing will.
Deferred = Callable[[bytes, str, bool], Awaitable[Reply] | None]

UDP_DRAIN = 64  # datagrams per wake-up before yielding to other work
# UDP messages answered later in flight at once; beyond that they are dropped (UDP may
# drop; clients retry), so a flood of them cannot pile up tasks without bound.
MAX_DEFERRED = 256
MAX_DATAGRAM = 65535


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    def __init__(
        self, handler: Handler, limiter: RateLimiter | None = None, deferred: Deferred | None = None
    ) -> None:
        self.handler = handler
        self.limiter = limiter  # response rate limiting; None: off, and free
        # Messages the handler returned None for: maybe answered from a task (dns/deferred).
        self.deferred = deferred
        self.sock: socket.socket | None = None
        self._batch: mmsg.BatchIO | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def bind(self, host: str, port: int) -> int:
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((host, port))
        self.sock = sock
        return int(sock.getsockname()[1])

    def start(self) -> None:
        assert self.sock is not None
        callback = self._readable
        if mmsg.available():
            self._batch = mmsg.BatchIO(self.sock, UDP_DRAIN)
            callback = self._readable_batched
        asyncio.get_running_loop().add_reader(self.sock.fileno(), callback)

    def _readable_batched(self) -> None:
        # Keep draining while full batches arrive, then yield to other work.
        batch = self._batch
        assert batch is not None
        limiter = self.limiter
        now = asyncio.get_running_loop().time() if limiter is not None else 0.0
        deferred = self._defer_raw if self.deferred is not None else None
        for _ in range(4):
            if batch.pump(self.handler, limiter, now, deferred) < UDP_DRAIN:
                return

    def _defer_raw(self, data: bytes, sockaddr: bytes) -> None:
        address = _sockaddr(sockaddr)
        if address is not None:
            self._defer(data, address)

    def _defer(self, data: bytes, addr: tuple[str, int]) -> None:
        """Answer ``data`` from a task if it is answered later at all; else it stays dropped."""
        if self.deferred is None:
            return
        later = self.deferred(data, addr[0], False)
        if later is None:
            return
        if len(self._tasks) >= MAX_DEFERRED:
            if inspect.iscoroutine(later):
                later.close()  # never started: nothing to undo
            return
        task = asyncio.get_running_loop().create_task(self._answer_later(later, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_later(self, later: Awaitable[Reply], addr: tuple[str, int]) -> None:
        try:
            reply = await later
        except Exception:
            log.exception("unexpected error answering a UDP message later; dropped it")
            return
        if not isinstance(reply, bytes) or self.sock is None:
            return  # nothing, or what only TCP carries
        limiter = self.limiter
        if limiter is not None:  # answered later, limited the same (RRL)
            now = asyncio.get_running_loop().time()
            verdict = limiter.check(network_of_host(addr[0]), now)
            if verdict is Verdict.DROP:
                return
            if verdict is Verdict.SLIP:
                reply = slip_reply(reply)
        with contextlib.suppress(OSError):
            self.sock.sendto(reply, addr)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        handler = self.handler
        recv = sock.recvfrom
        send = sock.sendto
        limiter = self.limiter
        now = asyncio.get_running_loop().time() if limiter is not None else 0.0
        for _ in range(UDP_DRAIN):
            try:
                # 64 KiB stays below glibc's mmap threshold; the bytes object is shrunk in place.
                data, addr = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP errors surfacing on Linux: keep serving
                continue
            try:
                reply = handler(data, tcp=False)
            except Exception:
                log.exception("unexpected error answering a UDP query; dropped it")
                continue
            if reply is None:
                if self.deferred is not None:
                    self._defer(data, addr)
                continue
            if limiter is not None:
                verdict = limiter.check(network_of_host(addr[0]), now)
                if verdict is Verdict.DROP:
                    continue
                if verdict is Verdict.SLIP:
                    reply = slip_reply(reply)
            try:  # noqa: SIM105 - a with-block per datagram costs measurable time
                send(reply, addr)
            except OSError:  # full send buffer or a vanished peer: UDP may drop
                pass

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


def _sockaddr(raw: bytes) -> tuple[str, int] | None:
    """A ``struct sockaddr_in``/``sockaddr_in6`` as (host, port)."""
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


class _TcpConnection(asyncio.Protocol):
    """One client connection: frames in, replies out, in order (RFC 7766 §6.2.1).

    A protocol rather than streams: a pipelined burst is answered from one
    ``data_received`` call with one write, which is what makes TCP fast.
    """

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.idle: asyncio.TimerHandle | None = None
        self.paused = False
        self.client = ""  # the peer's address: the per-client cap and zone-transfer ACLs
        # A message answered later (an UPDATE, a query waiting for a build, a streamed
        # transfer): the messages after it wait in the buffer, so replies stay in order.
        self.waiting: asyncio.Task[None] | None = None
        self.writable: asyncio.Event | None = None  # cleared while the client is not reading

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        if not self.listener.admit(self):
            transport.abort()
            return
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.listener.idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        # RFC 7766 §6.2.3: the server closes idle connections.
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        buf = self.buffer
        buf += data
        if self.waiting is not None:
            return
        handler = self.listener.handler
        stream = self.listener.stream_handler
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if end - pos - 2 < length:
                break  # the rest of this message has not arrived yet
            reply: Reply
            try:
                message = bytes(buf[pos + 2 : pos + 2 + length])
                if stream is not None:
                    reply = stream(message, self.client)
                else:
                    reply = handler(message, tcp=True)
            except Exception:
                log.exception("unexpected error answering a TCP query; closing the connection")
                reply = None
            pos += 2 + length
            later = None
            if reply is None and self.listener.deferred is not None:
                later = self.listener.deferred(message, self.client, True)
            if later is not None:
                del buf[:pos]
                if out:
                    transport.write(b"".join(out))
                self.waiting = asyncio.get_running_loop().create_task(self._answer_later(later))
                return
            if reply is None:
                # Not even a header: nothing sensible can follow on this stream.
                if out:
                    transport.write(b"".join(out))
                transport.close()
                return
            if isinstance(reply, list):  # a zone transfer: several messages, in order
                for part in reply:
                    out.append(len(part).to_bytes(2, "big"))
                    out.append(part)
                continue
            if not isinstance(reply, bytes):  # a large transfer: written a batch at a time
                del buf[:pos]
                if out:
                    transport.write(b"".join(out))
                self.waiting = asyncio.get_running_loop().create_task(self._stream_out(reply))
                return
            out.append(len(reply).to_bytes(2, "big"))
            out.append(reply)
        del buf[:pos]
        if out:
            transport.write(b"".join(out))
            # RFC 7766 §6.2.3: the idle time runs between whole queries. Re-arming on
            # every chunk would let a client dripping one byte at a time hold a slot.
            self._arm()
            self.listener.touched(self)
        if self.listener.closing and not buf:
            transport.close()

    async def _answer_later(self, later: Awaitable[Reply]) -> None:
        try:
            reply = await later
        except Exception:
            log.exception("unexpected error answering a TCP message later")
            reply = None
        self.waiting = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply is None:
            transport.close()
            return
        if not isinstance(reply, bytes | list):  # a transfer that waited, now streamed
            self.waiting = asyncio.get_running_loop().create_task(self._stream_out(reply))
            return
        parts = reply if isinstance(reply, list) else [reply]
        transport.write(b"".join(len(part).to_bytes(2, "big") + part for part in parts))
        self._arm()
        self.listener.touched(self)
        self.data_received(b"")  # what arrived meanwhile

    async def _stream_out(self, stream: MessageStream) -> None:
        """Write ``stream`` a batch per turn of the loop, waiting while the client reads."""
        try:
            while not stream.done:
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                batch = stream.next_batch()
                if batch:
                    transport.write(b"".join(len(m).to_bytes(2, "big") + m for m in batch))
                self._arm()  # a transfer in progress is not an idle connection
                if self.writable is not None:
                    await self.writable.wait()
                await asyncio.sleep(0)  # other clients' turn
        except Exception:
            log.exception("unexpected error streaming a zone transfer; closing the connection")
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            self.waiting = None
            stream.close()  # nothing left, or the client went: release what it holds
        self.listener.touched(self)
        self.data_received(b"")  # what arrived meanwhile

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions.
        if self.transport is not None:
            self.transport.pause_reading()
        if self.writable is None:
            self.writable = asyncio.Event()
        self.writable.clear()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.waiting is not None:
            self.waiting.cancel()  # the store write, once begun, completes regardless
        self.listener.forget(self)
        self.listener.drained()


class TcpListener:
    """DNS over TCP: length-prefixed messages, several per connection (RFC 7766).

    Fairness (RFC 7766 §6.2.2 asks servers to limit connections per client and
    to reclaim idle ones, as NSD, Knot and BIND do): one client address holds
    at most ``max_per_client`` connections; when all ``max_connections`` are
    taken, the connection idle longest is closed to admit the new one, so a
    client that opens slots and sits on them cannot lock others out.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        idle_timeout: float,
        max_connections: int,
        max_per_client: int = 16,
        stream_handler: StreamHandler | None = None,
        listen: Listen | None = None,
        deferred: Deferred | None = None,
    ) -> None:
        self.handler = handler
        self.stream_handler = stream_handler
        self.listen = listen
        self.deferred = deferred
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.server: asyncio.AbstractServer | None = None
        # Least recently active first (a dict keeps insertion order; activity re-inserts).
        self.connections: dict[_TcpConnection, None] = {}
        self.per_client: dict[str, int] = {}
        self.closing = False
        self.refused = 0
        self.refused_per_client = 0
        self.evicted = 0
        self._all_closed: asyncio.Event | None = None

    def admit(self, conn: _TcpConnection) -> bool:
        """Take ``conn`` in, closing the longest-idle connection if every slot is taken."""
        if self.closing:
            self.refused += 1
            return False
        held = self.per_client.get(conn.client, 0)
        if held >= self.max_per_client:
            self.refused += 1
            self.refused_per_client += 1
            return False
        if len(self.connections) >= self.max_connections:
            # Idle: no query half received. The oldest such one goes.
            victim = next((c for c in self.connections if not c.buffer), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self.forget(victim)
            if victim.transport is not None:
                victim.transport.close()  # flushes answers already written
        self.connections[conn] = None
        self.per_client[conn.client] = held + 1
        return True

    def touched(self, conn: _TcpConnection) -> None:
        if conn in self.connections:
            del self.connections[conn]
            self.connections[conn] = None

    def forget(self, conn: _TcpConnection) -> None:
        if conn in self.connections:
            del self.connections[conn]
            left = self.per_client.get(conn.client, 1) - 1
            if left > 0:
                self.per_client[conn.client] = left
            else:
                self.per_client.pop(conn.client, None)

    async def start(self, host: str, port: int) -> int:
        if self.listen is not None:
            server = await self.listen(lambda: _TcpConnection(self), host, port)
        else:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: _TcpConnection(self), host, port, family=_family(host), reuse_address=True
            )
        self.server = server
        sockets: list[socket.socket] = getattr(server, "sockets", [])
        return int(sockets[0].getsockname()[1])

    def drained(self) -> None:
        if self.closing and not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting; connections close once their answers are written."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            if conn.transport is not None and not conn.buffer:
                conn.transport.close()  # flushes what is already written, then closes
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()


class DnsServer:
    """UDP and TCP on the same address and port."""

    def __init__(
        self,
        handler: Handler,
        *,
        idle_timeout: float,
        max_connections: int,
        max_per_client: int = 16,
        limiter: RateLimiter | None = None,
        stream_handler: StreamHandler | None = None,
        listen: Listen | None = None,
        deferred: Deferred | None = None,
    ) -> None:
        self.udp = UdpListener(handler, limiter, deferred)
        self.tcp = TcpListener(
            handler,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_per_client=max_per_client,
            stream_handler=stream_handler,
            listen=listen,
            deferred=deferred,
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        # Port 0: take a free UDP port, then the same TCP port; retry if TCP's is busy.
        for _ in range(20):
            udp_port = self.udp.bind(host, port)
            try:
                self.port = await self.tcp.start(host, udp_port)
            except OSError:
                self.udp.close()
                if port != 0:
                    raise
                continue
            self.udp.start()
            return self.port
        raise OSError(f"no port free for both UDP and TCP on {host}")

    async def close(self) -> None:
        self.udp.close()
        await self.tcp.close()
