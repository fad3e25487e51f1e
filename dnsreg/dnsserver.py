"""The DNS listeners: UDP and TCP on one address. Only bytes in, bytes out.

UDP uses its own non-blocking socket with ``loop.add_reader`` and drains many
datagrams per wake-up: CPython's stock datagram transport allocates a 256 KiB
buffer per ``recvfrom``, which glibc can turn into an mmap/munmap per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("dnsreg.dns")

Handler = Callable[..., bytes | None]  # (data, *, tcp) -> reply or None

UDP_DRAIN = 64  # datagrams per wake-up before yielding to other work
MAX_DATAGRAM = 65535


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock: socket.socket | None = None
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)

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
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        handler = self.handler
        recv = sock.recvfrom_into
        view = self._view
        for _ in range(UDP_DRAIN):
            try:
                size, addr = recv(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP errors surfacing on Linux: keep serving
                continue
            try:
                reply = handler(bytes(view[:size]), tcp=False)
            except Exception:
                log.exception("unexpected error answering a UDP query; dropped it")
                continue
            if reply is not None:
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    sock.sendto(reply, addr)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


class TcpListener:
    """RFC 7766: length-prefixed messages, several per connection, answered in order."""

    def __init__(self, handler: Handler, *, idle_timeout: float, max_connections: int) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        self.refused = 0

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(
            self._serve, host, port, family=_family(host), reuse_address=True
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections or self._closing:
            self.refused += 1
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._conversation(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("unexpected error on a DNS TCP connection")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not self._closing:
            prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
            (length,) = struct.unpack("!H", prefix)
            # A length that the peer never delivers ends in the idle timeout.
            data = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
            reply = self.handler(data, tcp=True)
            if reply is None:
                return  # not even a header: nothing sensible to say on this stream
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()

    async def close(self, grace: float = 2.0) -> None:
        self._closing = True
        if self.server is not None:
            self.server.close()
        # Let replies in flight finish; idle readers are cancelled.
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self.server is not None:
            await self.server.wait_closed()


class DnsServer:
    """UDP and TCP on the same address and port."""

    def __init__(self, handler: Handler, *, idle_timeout: float, max_connections: int) -> None:
        self.udp = UdpListener(handler)
        self.tcp = TcpListener(handler, idle_timeout=idle_timeout, max_connections=max_connections)
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
