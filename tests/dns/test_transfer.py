"""The transfer journal and serial arithmetic (pure), and the NOTIFY sender over real UDP."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import Counter

import dns.flags
import dns.message
import dns.opcode
import dns.rdatatype
import pytest

from dnsreg.core.model import Check, CheckStatus, Health, Registration
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Settings
from dnsreg.dns.notify import Notifier, Secondary
from dnsreg.dns.records import PTR, SRV, A
from dnsreg.dns.transfer import Journal, serial_lt, serial_of
from dnsreg.dns.zones import StaticZones
from tests.helpers import async_wait_until

ORIGIN = ("service", "local")


def reg(service: str, iid: str, address: str = "10.0.0.5", **kw: object) -> Registration:
    return Registration(service, iid, ipaddress.ip_address(address), 80, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "older"),
    [
        (1, 2, True),
        (2, 1, False),
        (5, 5, False),
        (2**32 - 1, 0, True),  # RFC 1982 §3.2: across the wrap
        (2**32 - 10, 5, True),
        (5, 2**32 - 10, False),
        (0, 2**31 - 1, True),
        (0, 2**31, False),  # exactly half-way: undefined, never "older"
        (2**31, 0, False),
    ],
)
def test_serial_arithmetic_rfc1982(a: int, b: int, older: bool) -> None:
    assert serial_lt(a, b) is older


def test_serial_is_the_revision_mod_2_32() -> None:
    assert serial_of(2**32 + 7) == 7


def test_journal_keeps_per_revision_diffs_and_forgets_past_its_limit() -> None:
    r = Registry()
    j = Journal(r, Settings(origin=ORIGIN), StaticZones(), limit=3)
    assert {rec.rtype for rec in j.records()} == {2, A, PTR}  # apex NS, ns.Z A, b/lb PTR
    start = r.revision
    r.register(reg("web", "web-1", tags=("canary",)), 0.0)
    j.observe()
    diff = j.since(serial_of(start))
    assert diff is not None
    assert len(diff) == 1
    assert diff[0].deleted == ()
    owners = {(".".join(rec.owner), rec.rtype) for rec in diff[0].added}
    assert ("web.service.local", A) in owners
    assert ("canary.web.service.local", SRV) in owners
    assert ("_canary._sub._web._tcp.service.local", PTR) in owners
    assert ("_services._dns-sd._udp.service.local", PTR) in owners
    r.set_maintenance("web", "web-1", "deploy")
    j.observe()
    last = j.diffs[-1]
    assert last.added == ()
    assert {".".join(rec.owner) for rec in last.deleted} >= {
        "web.service.local",
        "web-1._web._tcp.service.local",
        "_services._dns-sd._udp.service.local",
    }
    for n in range(2, 6):
        r.register(reg("web", f"web-{n}"), 0.0)
        j.observe()
    assert j.since(serial_of(start)) is None  # beyond ixfr_journal: AXFR
    assert j.since(serial_of(r.revision - 3)) is not None
    assert j.soa.rdata.serial == serial_of(r.revision)  # type: ignore[union-attr]


def test_journal_snapshot_equals_a_fresh_one_after_touch_driven_updates() -> None:
    """Incremental upkeep (only touched instances asked again) ends where a full build does."""
    r = Registry()
    j = Journal(r, Settings(origin=ORIGIN), StaticZones())
    steps = [
        lambda: r.register(reg("web", "a", tags=("x",)), 0.0),
        lambda: r.register(reg("web", "b", "10.0.0.6", tags=("x", "y")), 0.0),
        lambda: r.register(reg("web", "b", "10.0.0.7", proto="udp"), 0.0),
        lambda: r.deregister("web", "a"),
        lambda: r.register(reg("db", "d", "fd00::1"), 0.0),
    ]
    for step in steps:
        change = step()
        j.touch(change.service, change.id)
        j.observe()
    fresh = Journal(r, Settings(origin=ORIGIN), StaticZones())
    assert set(j.records()) == set(fresh.records())
    assert not any(rec.owner[0] == "a" for rec in j.records())


async def test_notify_is_coalesced_retried_and_acknowledged() -> None:
    loop = asyncio.get_running_loop()
    received: list[tuple[float, dns.message.Message]] = []
    answer_from = 2  # ignore the first NOTIFY: the sender must retry

    class Secondary_(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            msg = dns.message.from_wire(data)
            received.append((time.monotonic(), msg))
            if len(received) >= answer_from:
                self.transport.sendto(dns.message.make_response(msg).to_wire(), addr)  # type: ignore[attr-defined]

    transport, _ = await loop.create_datagram_endpoint(Secondary_, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    serial = [7]
    soa = lambda: f"ns.service.local. hostmaster.service.local. {serial[0]} 3600 600 86400 5"  # noqa: E731
    notifier = Notifier(ORIGIN, [Secondary("127.0.0.1", port)], soa)
    try:
        notifier.start()
        await async_wait_until(lambda: notifier.acknowledged[Secondary("127.0.0.1", port)] >= 1)
        assert len(received) == 2  # one lost, one retried
        first = received[0][1]
        assert first.opcode() == dns.opcode.NOTIFY
        assert first.flags & dns.flags.AA
        assert not first.flags & dns.flags.RD
        assert first.question[0].rdtype == dns.rdatatype.SOA
        assert first.answer[0][0].serial == 7
        # A burst of changes: at most one NOTIFY per second, carrying the newest serial.
        begin = time.monotonic()
        for n in range(20):
            serial[0] = 8 + n
            notifier.changed()
            await asyncio.sleep(0.01)
        await async_wait_until(lambda: received[-1][1].answer[0][0].serial == 27)
        late = [t for t, _ in received[2:]]
        assert len(late) <= 2, late
        assert all(b - a >= 0.95 for a, b in zip([received[1][0], *late], late, strict=False))
        assert time.monotonic() - begin < 2.5
    finally:
        await notifier.close()
        transport.close()


def test_journal_diffs_are_the_difference_of_two_full_snapshots() -> None:
    """Random writes to a few services (tags, protocols, TTLs, health, maintenance,
    removals; told to :meth:`Journal.touch` or not): after each, the kept journal's
    zone is a freshly built one's, and its IXFR entry is exactly what went and came."""
    rng = random.Random(11)
    r = Registry()
    check = Check("tcp", "127.0.0.1:1")
    j = Journal(r, Settings(origin=ORIGIN), StaticZones())
    before = set(j.records())
    for step in range(150):
        service = rng.choice(["web", "db", "api"])
        ids = list(r.instances(service))
        roll = rng.random()
        if roll < 0.5 or not ids:
            n = rng.randrange(8)
            change = r.register(
                reg(
                    service, f"i{n}", f"10.0.0.{n + 1}" if n % 3 else f"fd00::{n + 1}",
                    tags=tuple(rng.sample(["x", "y", "z"], rng.randrange(3))),
                    proto=rng.choice(["tcp", "udp"]), dns_ttl=rng.choice([5, 30]),
                    checks=(check,) if n == 0 else (),
                ),
                0.0,
            )  # fmt: skip
        elif roll < 0.7:
            change = r.deregister(service, rng.choice(ids))
        elif roll < 0.85:
            target = rng.choice(ids)
            change = r.set_maintenance(service, target, rng.choice([None, "deploy"]))
        else:
            target = rng.choice(ids)
            if not r.require(service, target).checks:
                continue
            state = rng.choice([Health.PASSING, Health.CRITICAL])
            change = r.set_check_status(service, target, 0, CheckStatus(state=state))
        if change is None:
            continue
        if rng.random() < 0.5:
            j.touch(change.service, change.id)
        j.observe()
        now = set(j.records())
        assert now == set(Journal(r, Settings(origin=ORIGIN), StaticZones()).records()), step
        diff = j.diffs[-1]
        assert diff.to_revision == r.revision
        assert (set(diff.deleted), set(diff.added)) == (before - now, now - before), step
        before = now


def test_a_transfer_carries_whole_rrsets_and_a_change_journals_only_its_records() -> None:
    """A service larger than any reply: its zone holds every record (not a reply-sized
    draw), one change is journaled as that instance's records alone, and a TTL that
    moves the RRset's minimum changes every record of the RRset (RFC 2181 §5.2)."""
    r = Registry()
    count = 6_000  # more A records than a 64 KiB reply holds (4 096)
    for n in range(count):
        r.register(reg("big", f"i{n}", f"10.1.{n >> 8}.{n & 255}", dns_ttl=30), 0.0)
    j = Journal(r, Settings(origin=ORIGIN), StaticZones())
    at = ("big", *ORIGIN)
    by_type = Counter(rec.rtype for rec in j.records() if rec.owner == at)
    assert by_type == {A: count, SRV: count}
    browse = ("_big", "_tcp", *ORIGIN)
    assert sum(1 for rec in j.records() if rec.owner == browse and rec.rtype == PTR) == count

    change = r.register(reg("big", "i7", "10.9.9.9", dns_ttl=30), 0.0)
    j.touch(change.service, change.id)
    j.observe()
    diff = j.diffs[-1]
    assert {rec.rdata.text() for rec in diff.deleted if rec.rtype == A} == {"10.1.0.7"}
    assert {rec.rdata.text() for rec in diff.added if rec.rtype == A} == {"10.9.9.9"}
    assert len(diff.deleted) == len(diff.added) == 2  # A at big and at i7.big (SRV the same)
    assert set(j.records()) == set(Journal(r, Settings(origin=ORIGIN), StaticZones()).records())

    change = r.register(reg("big", "low", "10.9.9.10", dns_ttl=5), 0.0)
    j.touch(change.service, change.id)
    j.observe()
    diff = j.diffs[-1]
    assert sum(1 for rec in diff.added if rec.owner == at and rec.rtype == A) == count + 1
    assert {rec.ttl for rec in j.records() if rec.owner == at} == {5}
    assert set(j.records()) == set(Journal(r, Settings(origin=ORIGIN), StaticZones()).records())


@pytest.mark.parametrize("seed", [5, 27, 31])
def test_a_sliced_observe_ends_where_a_whole_one_does(seed: int) -> None:
    """Observing a few instances at a time while writes keep landing (as the server does,
    one slice per loop turn): once caught up, the zone is a fresh snapshot's, and the
    journal entries made on the way lead from the previous zone to it exactly."""
    rng = random.Random(seed)
    r = Registry()
    for n in range(40):
        r.register(reg("big", f"b{n}", f"10.1.0.{n + 1}", dns_ttl=30, tags=("t",)), 0.0)
    j = Journal(r, Settings(origin=ORIGIN), StaticZones())
    before = set(j.records())
    entries = len(j.diffs)
    for step in range(300):
        service = rng.choice(["big", "web"])
        ids = list(r.instances(service))
        roll = rng.random()
        if roll < 0.6 or not ids:
            n = rng.randrange(50)
            change = r.register(
                reg(service, f"b{n}", f"10.1.0.{n + 1}", dns_ttl=rng.choice([5, 30, 30, 30]),
                    tags=tuple(rng.sample(["t", "u"], rng.randrange(3)))),
                0.0,
            )  # fmt: skip
        else:
            change = r.deregister(service, rng.choice(ids))
        j.touch(change.service, change.id)
        j.observe(budget=rng.choice([1, 3, 7]))
        if step % 10:
            continue
        while not j.observe(budget=5):
            pass
        now = set(j.records())
        assert now == set(Journal(r, Settings(origin=ORIGIN), StaticZones()).records()), step
        zone = set(before)
        for diff in list(j.diffs)[entries:]:
            assert not set(diff.added) & set(diff.deleted)
            zone = (zone - set(diff.deleted)) | set(diff.added)
        assert zone == now, step
        assert j.diffs[-1].to_revision == r.revision
        before, entries = now, len(j.diffs)


def test_a_zone_copy_holds_the_journal_still_and_releases_it() -> None:
    """A transfer copies the zone a step at a time: meanwhile a change waits (the copy is
    one revision), and once the copy is done or abandoned the journal catches up."""
    r = Registry()
    for n in range(300):
        r.register(reg("big", f"i{n}", f"10.1.{n >> 8}.{n & 255}"), 0.0)
    j = Journal(r, Settings(origin=ORIGIN), StaticZones())
    whole = set(j.records())
    steps = j.snapshot(step=200)
    copied = list(next(steps))
    change = r.register(reg("big", "late", "10.9.9.9"), 0.0)
    j.touch(change.service, change.id)
    assert not j.observe()  # held still
    copied += [rec for part in steps for rec in part]
    assert set(copied) == whole, "one revision, the one before the change"
    assert j.observe()
    assert any(rec.rdata.text() == "10.9.9.9" for rec in j.records())

    abandoned = j.snapshot(step=200)
    next(abandoned)
    change = r.deregister("big", "late")
    j.touch(change.service, change.id)
    assert not j.observe()
    abandoned.close()  # the client went
    assert j.observe()
    assert set(j.records()) == whole
