"""DNS TCP fairness: a per-client cap, and one client's 600 connections lock no one out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import dns.message
import pytest

from tests.helpers import async_wait_until, make_config, read_frame, start_server


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


async def ask(port: int, msg_id: int, source: str = "127.0.0.1") -> dns.message.Message | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(frame(dns.message.make_query("service.local", "SOA", id=msg_id).to_wire()))
        raw = await asyncio.wait_for(read_frame(reader), 3)
        return None if raw is None else dns.message.from_wire(raw)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def hog(port: int, source: str, count: int) -> list[asyncio.StreamWriter]:
    """Open ``count`` connections from ``source`` and keep them (as an attacker would)."""
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            continue
        writers.append(writer)
    return writers


async def test_one_client_holding_600_connections_locks_no_one_out(tmp_path: Path) -> None:
    server = await start_server(make_config(tmp_path))  # defaults: 512 in all, 16 per client
    assert server.dns is not None
    tcp = server.dns.tcp
    held: list[asyncio.StreamWriter] = []
    try:
        held = await hog(server.dns_port, "127.0.0.2", 600)
        await async_wait_until(lambda: tcp.refused_per_client >= 600 - 16)
        # The hog gets its 16; the other 584 were closed at once.
        assert tcp.per_client.get("127.0.0.2") == 16
        assert tcp.refused_per_client == 600 - 16
        # Another client's TCP queries are answered meanwhile, promptly.
        for n in range(5):
            started = time.monotonic()
            reply = await ask(server.dns_port, 100 + n)
            assert reply is not None
            assert reply.id == 100 + n
            assert time.monotonic() - started < 1.0
    finally:
        for writer in held:
            writer.close()
        await server.stop()


async def test_many_addresses_filling_the_cap_make_way_for_a_new_client(tmp_path: Path) -> None:
    # 3 hog addresses x 4 connections fill a cap of 10: the server closes the oldest idle.
    server = await start_server(make_config(tmp_path, tcp_max_connections=10, tcp_max_per_client=4))
    assert server.dns is not None
    held: list[asyncio.StreamWriter] = []
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            held += await hog(server.dns_port, source, 4)
        for n in range(3):
            reply = await ask(server.dns_port, 200 + n)
            assert reply is not None
            assert reply.id == 200 + n
        assert server.dns.tcp.evicted >= 3
        assert len(server.dns.tcp.connections) <= 10
    finally:
        for writer in held:
            writer.close()
        await server.stop()


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_bad_per_client_cap_is_refused(tmp_path: Path, bad: str) -> None:
    from dnsreg.config import load_config
    from dnsreg.core.errors import ConfigError

    with pytest.raises(ConfigError, match="tcp_max_per_client"):
        load_config({"tcp_max_per_client": bad}, env={})
