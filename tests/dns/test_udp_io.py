"""Both UDP paths (batched recvmmsg/sendmmsg, plain recvfrom/sendto) over real sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from dnsreg.dns import udp_batch as mmsg
from tests.helpers import make_config, start_server


def _exchange(port: int, payloads: list[bytes], timeout: float = 2.0) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
        return [s.recv(65535) for _ in payloads]


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
async def test_burst_of_queries_all_answered_in_order_of_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    if not batched:
        monkeypatch.setattr(mmsg, "available", lambda: False)
    elif not mmsg.available():
        pytest.skip("this platform's libc has no recvmmsg/sendmmsg")
    server = await start_server(make_config(tmp_path))
    try:
        queries = [dns.message.make_query(f"n{i}.service.local", "A") for i in range(200)]
        replies = await asyncio.to_thread(
            _exchange, server.dns_port, [q.to_wire() for q in queries]
        )
        got = {dns.message.from_wire(r).id: dns.message.from_wire(r) for r in replies}
        assert set(got) == {q.id for q in queries}
        assert all(m.rcode() == dns.rcode.NXDOMAIN for m in got.values())
    finally:
        await server.stop()


async def test_datagram_longer_than_a_receive_slot_is_refused_not_fatal(tmp_path: Path) -> None:
    server = await start_server(make_config(tmp_path))
    try:
        query = dns.message.make_query("x.service.local", "A", use_edns=0)
        padded = bytearray(query.to_wire() + b"\0" * (mmsg.SLOT + 100))
        (reply,) = await asyncio.to_thread(_exchange, server.dns_port, [bytes(padded)])
        assert reply[:2] == padded[:2]
        assert reply[3] & 0xF == dns.rcode.FORMERR
        (ok,) = await asyncio.to_thread(_exchange, server.dns_port, [query.to_wire()])
        assert dns.message.from_wire(ok).rcode() == dns.rcode.NXDOMAIN
    finally:
        await server.stop()
