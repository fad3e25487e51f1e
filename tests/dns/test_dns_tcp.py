"""DNS over TCP (RFC 7766): framing, pipelining, idle timeout, connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from dnsreg.app import Server
from tests.helpers import Running, make_config, read_frame, start_server, tcp_raw


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def query(name: str, rdtype: str, msg_id: int) -> bytes:
    return dns.message.make_query(name, rdtype, id=msg_id).to_wire()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, within: float = 3.0) -> bool:
    """True when the server closes (or resets) the connection without sending anything."""
    try:
        data = await asyncio.wait_for(reader.read(1), within)
    except ConnectionError:
        return True
    return data == b""


async def serve(tmp_path: Path, **overrides: Any) -> Server:
    return await start_server(make_config(tmp_path, **overrides))


async def test_length_prefixed_framing(running: Running) -> None:
    await running.register("web", "web-1")
    raw = await tcp_raw(running.dns_port, query("web.service.local", "A", 7))
    assert raw is not None
    msg = dns.message.from_wire(raw)  # exactly one message: from_wire refuses trailing bytes
    assert msg.id == 7
    assert [r.to_text() for rr in msg.answer for r in rr] == ["10.0.0.5"]


async def test_a_frame_split_across_segments(running: Running) -> None:
    await running.register("web", "web-1")
    data = frame(query("web.service.local", "A", 9))
    async with connection(running.dns_port) as (reader, writer):
        # One octet per write: the length prefix itself arrives in two pieces.
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)  # let the server see each piece on its own
        raw = await read_frame(reader)
    assert raw is not None
    assert dns.message.from_wire(raw).id == 9


async def test_pipelined_queries_are_answered_in_order(running: Running) -> None:
    await running.register("web", "web-1", address="10.0.0.5")
    await running.register("web", "web-6", address="2001:db8::6")
    asked = [
        ("web.service.local", "A", dns.rcode.NOERROR, dns.rdatatype.A),
        ("web.service.local", "AAAA", dns.rcode.NOERROR, dns.rdatatype.AAAA),
        ("web.service.local", "SRV", dns.rcode.NOERROR, dns.rdatatype.SRV),
        ("nope.service.local", "A", dns.rcode.NXDOMAIN, None),
        ("service.local", "SOA", dns.rcode.NOERROR, dns.rdatatype.SOA),
        ("example.org", "A", dns.rcode.REFUSED, None),
    ]
    async with connection(running.dns_port) as (reader, writer):
        for rounds in range(2):  # the second round comes from the answer cache
            # All in one write, as glibc sends A and AAAA back to back.
            writer.write(
                b"".join(
                    frame(query(n, t, 100 * rounds + i)) for i, (n, t, _, _) in enumerate(asked)
                )
            )
            await writer.drain()
            for i, (name, _, rcode, answer_type) in enumerate(asked):
                raw = await read_frame(reader)
                assert raw is not None, name
                msg = dns.message.from_wire(raw)
                assert msg.id == 100 * rounds + i, "answers come back in question order"
                assert msg.rcode() == rcode, name
                if answer_type is not None:
                    assert msg.answer[0].rdtype == answer_type


async def test_idle_connections_are_closed(tmp_path: Path) -> None:
    server = await serve(tmp_path, tcp_idle_timeout=0.3)
    try:
        port = server.dns_port
        # After an answered query.
        async with connection(port) as (reader, writer):
            writer.write(frame(query("service.local", "SOA", 1)))
            assert await read_frame(reader) is not None
            started = time.monotonic()
            assert await closed_by_server(reader)
            assert time.monotonic() - started >= 0.25
        # A connection that never says anything.
        async with connection(port) as (reader, _):
            started = time.monotonic()
            assert await closed_by_server(reader)
            assert time.monotonic() - started >= 0.25
        # A length prefix whose message never comes.
        async with connection(port) as (reader, writer):
            writer.write(b"\x00\x40" + b"\x00" * 10)
            assert await closed_by_server(reader)
        # The server still answers new connections.
        assert await tcp_raw(port, query("service.local", "SOA", 2)) is not None
    finally:
        await server.stop()


async def test_a_client_dripping_bytes_cannot_hold_a_connection(tmp_path: Path) -> None:
    # The idle time runs between whole queries (RFC 7766 §6.2.3), not between bytes.
    server = await serve(tmp_path, tcp_idle_timeout=0.3)
    try:
        async with connection(server.dns_port) as (reader, writer):
            started = time.monotonic()
            message = frame(query("service.local", "SOA", 3))
            closed = False
            for byte in message:
                writer.write(bytes([byte]))
                try:
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                    break
            assert closed, "the server kept a connection that never completed a query"
            assert time.monotonic() - started < 1.5
    finally:
        await server.stop()


async def test_full_cap_closes_the_oldest_idle_connection(tmp_path: Path) -> None:
    server = await serve(tmp_path, tcp_max_connections=2)
    port = server.dns_port
    try:
        async with connection(port) as first, connection(port) as second:
            for n, (reader, writer) in enumerate((first, second)):
                writer.write(frame(query("service.local", "SOA", n)))
                assert await read_frame(reader) is not None
            # Both slots taken, the first idle longest: a third client still gets in...
            async with connection(port) as (reader, writer):
                writer.write(frame(query("service.local", "SOA", 3)))
                raw = await read_frame(reader)
                assert raw is not None
                assert dns.message.from_wire(raw).id == 3
            # ...and the oldest idle connection was the one closed to make room.
            assert await closed_by_server(first[0])
            second[1].write(frame(query("service.local", "SOA", 11)))
            raw = await read_frame(second[0])
            assert raw is not None
            assert dns.message.from_wire(raw).id == 11
        assert server.dns is not None
        assert server.dns.tcp.evicted == 1
    finally:
        await server.stop()


@pytest.mark.parametrize("size", [0, 1, 11])
async def test_messages_without_a_header_close_the_connection(running: Running, size: int) -> None:
    async with connection(running.dns_port) as (reader, writer):
        writer.write(frame(b"\x00" * size))
        assert await closed_by_server(reader)
    assert await tcp_raw(running.dns_port, query("service.local", "SOA", 1)) is not None
