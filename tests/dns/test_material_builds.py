"""Large services' answer material is built in slices, not inline (issue 11: the loop
never stalls). Pure: the cache raises MaterialPending, the caller steps the build, and the
material it installs is what an inline build gives, with writes made meanwhile patched in."""

from __future__ import annotations

import ipaddress
import random

import dns.message
import dns.rdatatype
import pytest

from dnsreg.core.model import Check, CheckStatus, Health, Instance, Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Settings
from dnsreg.dns.material_cache import Build, MaterialCache, MaterialPending
from dnsreg.dns.record_memo import RecordMemo
from dnsreg.dns.records import AAAA, SRV, A, Record, address_record
from dnsreg.dns.responder import Responder
from dnsreg.dns.service_answers import everyone
from dnsreg.dns.zones import StaticZones

ORIGIN = parse_name("service.local")
CHECK = Check("tcp", "127.0.0.1:1")


def address(n: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if n % 3 == 0:
        return ipaddress.IPv6Address(f"fd00::{n >> 16:x}:{n & 0xFFFF:x}")
    return ipaddress.IPv4Address(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")


def registry_of(count: int, service: str = "big", **kwargs: object) -> Registry:
    registry = Registry(**kwargs)  # type: ignore[arg-type]
    for n in range(count):
        registry.register(
            Registration(service, f"i{n}", address(n), 80, weight=1 + n % 5, ttl=0), now=0.0
        )
    return registry


def get(cache: MaterialCache, registry: Registry, service: str = "big") -> object:
    return cache.get(registry, service, (), lambda: None, ORIGIN, everyone)


def pending(cache: MaterialCache, registry: Registry) -> Build:
    with pytest.raises(MaterialPending) as raised:
        get(cache, registry)
    return raised.value.build


def finish(cache: MaterialCache, build: Build, limit: int) -> int:
    steps = 0
    while not cache.step(build, limit):
        steps += 1
    return steps + 1


def summary(cache: MaterialCache, registry: Registry) -> dict[str, object]:
    material = cache.get(registry, "big", (), lambda: None, ORIGIN, everyone)
    return {
        "served": {i: (m.reg.address, m.revision) for i, m in material.served.items()},
        **{f"pool{t}": material.pool(t).count for t in (A, AAAA, SRV)},
        **{f"ttl{t}": material.pool(t).ttl for t in (A, AAAA, SRV)},
    }


def test_a_build_over_budget_is_stepped_in_slices_and_gives_what_an_inline_one_does() -> None:
    registry = registry_of(10_000)
    sliced = MaterialCache(budget=1_000)
    build = pending(sliced, registry)
    assert not build.done
    assert build.size == 10_000
    # Asked again while it runs: the same build, not a second one.
    assert pending(sliced, registry) is build
    assert finish(sliced, build, 1_000) == 10
    assert sliced.sliced == 1
    assert not sliced.building
    assert summary(sliced, registry) == summary(MaterialCache(), registry)


def test_writes_made_while_a_build_runs_are_in_the_material_it_leaves() -> None:
    registry = registry_of(6_000)
    cache = MaterialCache(budget=500)
    build = pending(cache, registry)
    cache.step(build, 2_000)
    # Meanwhile: one instance gone, one new, one re-registered elsewhere, one failing.
    registry.deregister("big", "i1")
    registry.register(Registration("big", "new", address(99_999), 80, ttl=0), now=1.0)
    registry.register(Registration("big", "i4", address(77_777), 80, ttl=0), now=1.0)
    registry.register(Registration("big", "i5", address(5), 80, ttl=0, checks=(CHECK,)), now=1.0)
    registry.set_check_status("big", "i5", 0, CheckStatus(state=Health.CRITICAL, last_run=1.0))
    finish(cache, build, 2_000)
    after = summary(cache, registry)
    served = after["served"]
    assert isinstance(served, dict)
    assert "i1" not in served
    assert "i5" not in served
    assert served["new"][0] == address(99_999)
    assert served["i4"][0] == address(77_777)
    assert after == summary(MaterialCache(), registry)


def test_a_panic_flip_during_a_build_is_honoured_when_it_is_asked_again() -> None:
    registry = Registry(panic_threshold=0.5)
    for n in range(2_000):
        registry.register(
            Registration("big", f"i{n}", address(n), 80, ttl=0, checks=(CHECK,)), now=0.0
        )
        registry.set_check_status(
            "big", f"i{n}", 0, CheckStatus(state=Health.PASSING, last_run=0.0)
        )
    cache = MaterialCache(budget=100)
    build = pending(cache, registry)
    cache.step(build, 500)
    for n in range(1_500):  # three quarters fail: panic mode serves every judged one
        registry.set_check_status(
            "big", f"i{n}", 0, CheckStatus(state=Health.CRITICAL, last_run=1.0)
        )
    assert registry.in_panic("big")
    finish(cache, build, 500)
    rebuild = pending(cache, registry)  # built at the old verdict: built again, not patched
    finish(cache, rebuild, 500)
    material = cache.get(registry, "big", (), lambda: None, ORIGIN, everyone)
    assert material.panic
    assert material.count == 2_000


def test_an_abandoned_build_leaves_nothing_and_the_next_query_starts_afresh() -> None:
    registry = registry_of(3_000)
    cache = MaterialCache(budget=100)
    build = pending(cache, registry)
    cache.step(build, 1_000)
    cache.abandon(build)
    assert build.done
    assert not cache.building
    assert not cache.entries
    assert cache.instances == 0
    again = pending(cache, registry)
    assert again is not build
    finish(cache, again, 1_000)
    assert summary(cache, registry) == summary(MaterialCache(), registry)


def test_builds_queue_only_within_the_instance_bound_then_run_inline() -> None:
    registry = registry_of(3_000)
    for s in range(3):
        for n in range(3_000):
            registry.register(Registration(f"s{s}", f"i{n}", address(n), 80, ttl=0), now=0.0)
    cache = MaterialCache(budget=100, max_instances=7_000)
    for s in ("big", "s0"):
        with pytest.raises(MaterialPending):
            get(cache, registry, s)
    material = cache.get(registry, "s1", (), lambda: None, ORIGIN, everyone)
    assert material.count == 3_000, "no room to queue a third: built inline"
    assert cache.instances <= 7_000


def test_the_responder_answers_none_and_names_the_build_then_answers() -> None:
    registry = registry_of(5_000)
    responder = Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(1))
    responder.materials.budget = 1_000
    query = dns.message.make_query("big.service.local", "A", use_edns=0)
    wire = query.to_wire()
    assert responder.respond(wire, tcp=False) is None
    build = responder.take_pending()
    assert build is not None
    assert responder.take_pending() is None
    finish(responder.materials, build, 1_000)
    reply = dns.message.from_wire(responder.respond(wire, tcp=False) or b"")
    assert reply.id == query.id
    assert reply.answer
    assert all(r.rdtype == dns.rdatatype.A for r in reply.answer)
    # A small service never waits.
    registry.register(Registration("small", "a", address(1), 80, ttl=0), now=0.0)
    small = dns.message.make_query("small.service.local", "A").to_wire()
    assert responder.respond(small, tcp=False) is not None


def test_the_record_memo_is_bounded_in_all_its_sets_together() -> None:
    """Many names of one big service (tags, say), each answered with a long draw, must not
    multiply the per-set bound: the oldest sets give theirs up."""
    registry = registry_of(4_000)
    instances = list(registry.instances("big").values())
    memo = RecordMemo(max_sets=64, per_set=2_000, total=5_000)
    for n in range(20):
        chosen = instances[n * 100 : n * 100 + 1_500]
        records = memo.records(("big", A, (f"t{n}", *ORIGIN)), chosen, lambda i, n=n: _record(i, n))
        assert [r.rdata.text() for r in records] == [str(i.reg.address) for i in chosen]
        assert memo.held == sum(len(s) for s in memo.sets.values()) <= 5_000
    assert len(memo.sets) == 3
    # The newest set is kept whole: asked again, nothing is built afresh.
    built = 0

    def count(i: Instance) -> Record:
        nonlocal built
        built += 1
        return _record(i, 19)

    memo.records(("big", A, ("t19", *ORIGIN)), instances[1_900:3_400], count)
    assert built == 0


def _record(instance: Instance, n: int) -> Record:
    return address_record((f"t{n}", *ORIGIN), A, 0, instance.reg.address)
