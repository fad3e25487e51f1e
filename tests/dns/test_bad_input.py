"""Hostile and broken packets over UDP and TCP: the server never breaks, never lies.

Seeded random input, bounded in count, so a failure replays exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct

import dns.edns
import dns.exception
import dns.message
import dns.rcode
import pytest

from tests.helpers import Running, read_frame, tcp_raw, udp_exchange

SEED = 20240611
QR = 0x8000


def valid_queries() -> list[bytes]:
    cookie = dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    return [
        dns.message.make_query("web.service.local", "A", id=1).to_wire(),
        dns.message.make_query("web-1.web.service.local", "TXT", id=2, use_edns=0).to_wire(),
        dns.message.make_query(
            "_web._tcp.service.local", "SRV", id=3, use_edns=0, options=[cookie]
        ).to_wire(),
        dns.message.make_query("service.local", "ANY", id=4).to_wire(),
    ]


def hostile_packets(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, random headers with random bodies, and mutated valid queries."""
    base = valid_queries()
    out: list[bytes] = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:  # pure noise
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:  # a plausible header, then noise
            header = struct.pack(
                "!HHHHHH",
                rng.randrange(65536),
                rng.choice([0, 0x0100, rng.randrange(65536) & ~QR]),
                rng.choice([0, 1, 1, 1, 2, 65535]),
                rng.choice([0, 0, 1, 65535]),
                rng.choice([0, 0, 1]),
                rng.choice([0, 1, 1, 2]),
            )
            out.append(header + rng.randbytes(rng.randrange(0, 200)))
        elif kind == 2:  # a valid query with a few octets flipped
            data = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data))
        else:  # a valid query cut short (or with junk appended)
            data = rng.choice(base)
            cut = rng.randrange(len(data) + 1)
            out.append(data[:cut] if rng.random() < 0.8 else data + rng.randbytes(3))
    return out


def truncations() -> list[bytes]:
    return [q[:n] for q in valid_queries() for n in range(len(q))]


def check_reply(packet: bytes, reply: bytes) -> None:
    """Whatever we answer is a well-formed response to that packet."""
    assert len(reply) >= 12
    assert reply[:2] == packet[:2], "reply carries the query's id"
    assert struct.unpack_from("!H", reply, 2)[0] & QR
    dns.message.from_wire(reply)  # parses: we never emit garbage ourselves


async def still_serving(running: Running) -> None:
    for tcp in (False, True):
        msg = await running.query("web.service.local", "A", tcp=tcp)
        assert msg.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for rr in msg.answer for r in rr] == ["10.0.0.5"]
    async with running.http.get(f"{running.base}/v1/services/web") as resp:
        body = await resp.json()
    assert [i["id"] for i in body["instances"]] == ["web-1"]
    assert body["instances"][0]["meta"] == {"version": "2"}


@pytest.fixture
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="dnsreg")


def assert_no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_responder_never_raises_and_every_reply_parses(running: Running) -> None:
    """The pure path, 5000 packets: fast enough to cover what sockets cannot."""
    await running.register("web", "web-1", meta={"version": "2"}, tags=["primary"])
    responder = running.server.responder
    assert responder is not None
    packets = hostile_packets(random.Random(SEED), 5000) + truncations()
    answered = 0
    for packet in packets:
        for tcp in (False, True):
            reply = responder.respond(packet, tcp=tcp)
            if reply is not None:
                answered += 1
                check_reply(packet, reply)
                if not tcp:
                    assert len(reply) <= 1232
    assert answered > 1000  # most packets with a readable header get FORMERR or an answer


@pytest.mark.usefixtures("no_unexpected_errors")
async def test_random_and_truncated_packets_over_udp(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    await running.register("web", "web-1", meta={"version": "2"})
    packets = hostile_packets(random.Random(SEED + 1), 1500) + truncations()
    by_id: dict[bytes, list[bytes]] = {}
    for packet in packets:
        by_id.setdefault(packet[:2], []).append(packet)
    replied = 0
    for start in range(0, len(packets), 100):  # batches: the client's own buffer is bounded
        batch = packets[start : start + 100]
        replies = await udp_exchange(running.dns_port, batch)
        replied += len(replies)
        for reply in replies:
            dns.message.from_wire(reply)
            assert struct.unpack_from("!H", reply, 2)[0] & QR
            assert reply[:2] in by_id
    assert replied > 300
    # Packets too short for a header got nothing: the empty one, for instance.
    assert await udp_exchange(running.dns_port, [b"", b"\x00" * 11]) == []
    await still_serving(running)
    assert_no_errors_logged(caplog)


@pytest.mark.usefixtures("no_unexpected_errors")
async def test_random_and_truncated_packets_over_tcp(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    await running.register("web", "web-1", meta={"version": "2"})
    packets = hostile_packets(random.Random(SEED + 2), 300) + truncations()
    answered = 0
    for packet in packets:
        reply = await tcp_raw(running.dns_port, packet)
        if reply is not None:
            answered += 1
            check_reply(packet, reply)
        elif len(packet) >= 12 and not packet[2] & 0x80:
            # A readable header that is not a response is always answered.
            pytest.fail(f"no reply to {packet.hex()}")
    assert answered > 100
    await still_serving(running)
    assert_no_errors_logged(caplog)


@pytest.mark.usefixtures("no_unexpected_errors")
async def test_oversized_and_lying_length_prefixes(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    await running.register("web", "web-1", meta={"version": "2"})
    port = running.dns_port
    rng = random.Random(SEED + 3)
    good = valid_queries()[0]

    # 65535 octets announced, a few sent, then the client hangs up.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\xff\xff" + good)
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    # 65535 octets announced and sent: a maximal message of noise after a query header.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    big = good[:12] + rng.randbytes(65535 - 12)
    writer.write(b"\xff\xff" + big)
    await writer.drain()
    reply = await read_frame(reader)
    assert reply is not None
    check_reply(big, reply)
    assert reply[3] & 0xF == dns.rcode.FORMERR
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    # A prefix shorter than the message: the rest is read as the next (broken) frame.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(len(good).to_bytes(2, "big") + good[:-4] + b"\x00\x01")
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    # A one-octet length prefix and nothing else.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00")
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    # Many connections each announcing 64 KiB at once, then vanishing.
    writers = []
    for _ in range(50):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xff\xff" + rng.randbytes(1000))
        writers.append(writer)
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    # A datagram of the largest size UDP carries.
    assert len(await udp_exchange(port, [good[:12] + rng.randbytes(65000)])) <= 1

    await still_serving(running)
    assert_no_errors_logged(caplog)


async def test_garbage_does_not_poison_the_answer_cache(running: Running) -> None:
    """A broken variant of a cached question must not get (or change) the cached reply."""
    await running.register("web", "web-1", meta={"version": "2"})
    good = dns.message.make_query("web.service.local", "A", id=5).to_wire()
    for _ in range(2):
        msg = dns.message.from_wire((await udp_exchange(running.dns_port, [good]))[0])
        assert [r.to_text() for rr in msg.answer for r in rr] == ["10.0.0.5"]
    broken = [
        good + b"\x00",  # trailing octet
        good[:-1],  # short
        good[:5] + b"\x02" + good[6:],  # QDCOUNT=2
        good[:11] + b"\x01" + good[12:],  # ARCOUNT=1, nothing there
    ]
    replies = await udp_exchange(running.dns_port, broken)
    assert len(replies) == len(broken)
    for reply in replies:
        assert reply[3] & 0xF == dns.rcode.FORMERR
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(broken[0])  # sanity: dnspython agrees it is broken
    await still_serving_plain(running)


async def still_serving_plain(running: Running) -> None:
    msg = await running.query("web.service.local", "A")
    assert [r.to_text() for rr in msg.answer for r in rr] == ["10.0.0.5"]
