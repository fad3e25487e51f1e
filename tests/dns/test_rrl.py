"""Response rate limiting: token buckets on a fake clock, then over a real UDP socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rrset
import pytest

from dnsreg.dns.rrl import (
    RateLimiter,
    Verdict,
    network_of_host,
    network_of_sockaddr,
    slip_reply,
)
from tests.helpers import async_wait_until, make_config, start_server


def test_within_the_rate_everything_goes_out() -> None:
    limiter = RateLimiter(10)
    verdicts = [limiter.check(b"net", now=t / 10) for t in range(100)]  # 10/s for 10 s
    assert set(verdicts) == {Verdict.SEND}


def test_over_the_rate_every_second_limited_response_slips() -> None:
    limiter = RateLimiter(5, slip=2)
    verdicts = [limiter.check(b"net", now=0.0) for _ in range(15)]
    assert verdicts[:5] == [Verdict.SEND] * 5  # one second of burst
    assert verdicts[5:] == [Verdict.DROP, Verdict.SLIP] * 5
    assert (limiter.dropped, limiter.slipped) == (5, 5)
    # Time refills the bucket at the rate: half a second later, 2.5 tokens -> 2 sends.
    assert [limiter.check(b"net", now=0.5) for _ in range(3)][:2] == [Verdict.SEND] * 2


def test_networks_are_limited_apart_and_slip_zero_drops_all() -> None:
    limiter = RateLimiter(1, slip=0)
    assert limiter.check(b"a", 0.0) is Verdict.SEND
    assert limiter.check(b"a", 0.0) is Verdict.DROP
    assert limiter.check(b"b", 0.0) is Verdict.SEND
    assert limiter.slipped == 0


def test_buckets_stay_bounded() -> None:
    limiter = RateLimiter(1, max_buckets=100)
    for n in range(1000):
        limiter.check(n.to_bytes(3, "big"), now=float(n))
    assert len(limiter.buckets) <= 100


def test_networks_are_slash_24_and_slash_56() -> None:
    assert network_of_host("192.0.2.7") == network_of_host("192.0.2.200")
    assert network_of_host("192.0.2.7") != network_of_host("192.0.3.7")
    assert network_of_host("2001:db8:0:ab::1") == network_of_host("2001:db8:0:ff::9")
    assert network_of_host("2001:db8:0:100::1") != network_of_host("2001:db8:0:ff::1")
    assert network_of_host("::ffff:192.0.2.7") == network_of_host("192.0.2.9")
    v4 = socket.AF_INET.to_bytes(2, "little") + b"\x00\x35" + bytes([192, 0, 2, 7]) + b"\0" * 8
    assert network_of_sockaddr(v4) == network_of_host("192.0.2.1")


def test_slip_reply_is_the_question_with_tc() -> None:
    reply = dns.message.make_response(dns.message.make_query("web.service.local", "A"))
    reply.answer.append(
        dns.rrset.from_text("web.service.local.", 5, "IN", "A", "10.0.0.1", "10.0.0.2")
    )
    slipped = dns.message.from_wire(slip_reply(reply.to_wire()))
    assert slipped.id == reply.id
    assert slipped.flags & dns.flags.TC
    assert slipped.answer == []
    assert slipped.question == reply.question


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[bytes] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.append(data)


@pytest.mark.parametrize("rate", [10])
async def test_rate_limit_over_a_real_socket(tmp_path: Path, rate: int) -> None:
    server = await start_server(make_config(tmp_path, rate_limit=float(rate)))
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Collect, remote_addr=("127.0.0.1", server.dns_port)
    )
    try:
        sent = 60
        for n in range(sent):  # a burst far over 10/s from one /24
            transport.sendto(dns.message.make_query("service.local", "SOA", id=n).to_wire())
        assert server.dns is not None
        limiter = server.dns.udp.limiter
        assert limiter is not None
        # What the server drops never arrives: wait until every query is accounted for.
        await async_wait_until(lambda: limiter.dropped + len(proto.replies) >= sent)
        replies = [dns.message.from_wire(r) for r in proto.replies]
        full = [m for m in replies if not m.flags & dns.flags.TC]
        slipped = [m for m in replies if m.flags & dns.flags.TC]
        assert rate <= len(full) <= rate + 3  # the burst, plus what the test's time refilled
        assert slipped
        assert all(not m.answer for m in slipped)
        assert len(replies) < sent  # the rest were dropped
        assert limiter.slipped == len(slipped)
        assert limiter.dropped == sent - len(replies)
        # TCP is never limited: the client's retry is answered.
        reply = await asyncio.wait_for(
            dns.asyncquery.tcp(
                dns.message.make_query("service.local", "SOA"), "127.0.0.1", port=server.dns_port
            ),
            3,
        )
        assert reply.answer
    finally:
        transport.close()
        await server.stop()
