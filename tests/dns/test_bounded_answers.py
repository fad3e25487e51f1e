"""Bounded answers, pure: the builder draws a bounded weighted subset once per revision
of a service's material, the encoder fits it, and memory stays bounded."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message

from dnsreg.core.model import Check, CheckStatus, Health, Instance, Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answer_cache import VARIANTS, variants_for
from dnsreg.dns.answers import Question, Settings, answer
from dnsreg.dns.material_cache import MaterialCache
from dnsreg.dns.records import AAAA, SRV, A
from dnsreg.dns.responder import Responder
from dnsreg.dns.service_answers import Material
from dnsreg.dns.zones import StaticZones

ORIGIN = parse_name("service.local")


def registry_of(count: int, *, heavy: int = 0, priority_split: bool = False) -> Registry:
    registry = Registry()
    for n in range(count):
        registry.register(
            Registration(
                "big",
                f"i{n}",
                ipaddress.IPv4Address(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"),
                80,
                weight=100 if n < heavy else 1,
                priority=(n % 2) if priority_split else 0,
                ttl=0,
            ),
            now=0.0,
        )
    return registry


def test_max_answers_caps_srv_too() -> None:
    registry = registry_of(50)
    settings = Settings(origin=ORIGIN, max_answers=7)
    reply = answer(
        Question(("big", *ORIGIN), SRV, tcp=True),
        registry,
        StaticZones(),
        settings,
        random.Random(1),
    )
    assert len(reply.answer) == 7
    assert len(reply.additional) == 7  # glue for exactly the chosen targets
    assert reply.available == 7  # a configured cap is not a truncation: no "N of M"


def test_the_draw_is_bounded_by_what_a_reply_can_hold() -> None:
    registry = registry_of(20_000)
    settings = Settings(origin=ORIGIN)
    rng = random.Random(2)
    udp = answer(Question(("big", *ORIGIN), A), registry, StaticZones(), settings, rng)
    tcp = answer(Question(("big", *ORIGIN), A, tcp=True), registry, StaticZones(), settings, rng)
    assert udp.available == tcp.available == 20_000
    assert len(udp.answer) <= 1232 // 16 + 1
    assert 65535 // 16 <= len(tcp.answer) <= 65535 // 16 + 1
    assert len({r.rdata for r in tcp.answer}) == len(tcp.answer), "no instance twice"


def test_lower_priority_first_and_weights_steer_the_subset() -> None:
    registry = registry_of(20_000, heavy=100, priority_split=True)
    settings = Settings(origin=ORIGIN)
    rng = random.Random(3)
    memo = MaterialCache()
    seen: Counter[str] = Counter()
    for _ in range(30):
        reply = answer(
            Question(("big", *ORIGIN), SRV), registry, StaticZones(), settings, rng, memo
        )
        assert all(r.rdata.priority == 0 for r in reply.answer)  # type: ignore[union-attr]
        seen.update("heavy" if int(r.rdata.target[0][1:]) < 100 else "light" for r in reply.answer)  # type: ignore[union-attr]
    # 50 heavy (weight 100) of 10 000 at priority 0: a third of the weight, so about a
    # third of what is drawn; uniformly it would be 0.5 %.
    assert seen["heavy"] / sum(seen.values()) > 0.2
    assert memo.builds == 1, "material built once for the revision"


def test_material_moves_when_and_only_when_the_service_changes() -> None:
    registry = registry_of(100)
    registry.register(
        Registration("other", "o", ipaddress.IPv4Address("10.9.9.9"), 80, ttl=0), now=0.0
    )
    memo = MaterialCache()
    settings = Settings(origin=ORIGIN)

    def ask(service: str) -> None:
        answer(
            Question((service, *ORIGIN), A),
            registry,
            StaticZones(),
            settings,
            random.Random(),
            memo,
        )

    ask("big")
    ask("big")
    ask("other")
    assert memo.builds == 2
    registry.register(
        Registration("other", "p", ipaddress.IPv4Address("10.9.9.8"), 80, ttl=0), now=0.0
    )
    ask("big")
    assert memo.builds == 2, "a change elsewhere leaves this service's material alone"
    registry.register(
        Registration("big", "new", ipaddress.IPv4Address("10.9.9.7"), 80, ttl=0), now=0.0
    )
    ask("big")
    assert (memo.builds, memo.patches) == (2, 1), "one change to it: patched, not rebuilt"


def test_material_cache_is_bounded_in_instances() -> None:
    registry = registry_of(1_000)
    memo = MaterialCache(max_instances=2_500)
    settings = Settings(origin=ORIGIN)
    for n in range(10):  # ten revisions x two keys, each 1 000 instances
        registry.register(
            Registration("big", f"x{n}", ipaddress.IPv4Address("10.9.0.1"), 1, ttl=0), now=0.0
        )
        answer(
            Question(("big", *ORIGIN), A), registry, StaticZones(), settings, random.Random(), memo
        )
    assert memo.instances <= 2_500


def test_big_replies_keep_fewer_variants_and_the_cache_stays_within_its_bytes() -> None:
    assert variants_for(200) == VARIANTS
    assert variants_for(65535) == 4
    registry = registry_of(6_000)
    responder = Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(4))
    responder.cache.max_bytes = 300_000
    for payload in range(20):  # distinct keys: plain and EDNS, TCP, each ~64 KiB
        q = dns.message.make_query("big.service.local", "A", use_edns=0, payload=512 + payload)
        for _ in range(6):
            wire = responder.respond(q.to_wire(), tcp=True)
            assert wire is not None
    assert responder.cache.bytes <= 300_000 + 4 * 65535 + 65535


def test_tcp_reply_says_n_of_m_and_udp_sets_tc() -> None:
    registry = registry_of(6_000)
    responder = Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(5))
    q = dns.message.make_query("big.service.local", "A", use_edns=0)
    tcp = dns.message.from_wire(responder.respond(q.to_wire(), tcp=True) or b"")
    n = len(tcp.answer[0])
    assert not tcp.flags & dns.flags.TC
    texts = [o.text for o in tcp.options if isinstance(o, dns.edns.EDEOption)]
    assert texts == [f"{n} of 6000 records"]
    udp = dns.message.from_wire(responder.respond(q.to_wire(), tcp=False) or b"")
    assert udp.flags & dns.flags.TC
    assert 0 < len(udp.answer[0]) < n


def _pools_of(material: Material) -> dict[int, tuple[object, ...]]:
    """What answers draw from, order aside: by type, each priority's ids and weight total."""
    out: dict[int, tuple[object, ...]] = {}
    for rtype in (A, AAAA, SRV):
        pool = material.pool(rtype)
        groups = tuple(
            (
                g.priority, sorted(i.reg.id for i in g.instances), g.total if g.instances else 0,
                +g.weight_counts,
            )
            for g in pool.groups
        )  # fmt: skip
        for g in pool.groups:  # the counts follow the weights through every patch
            assert g.weight_counts == Counter(g.weights)
        out[rtype] = (groups, pool.count, pool.ttl, pool.min_rr)
    return out


def test_patched_material_equals_material_built_afresh() -> None:
    """Random registrations, re-registrations, removals, health flips and maintenance
    (staged and undone writes too): the material kept and patched across all of them
    is, after each step, what building it from scratch gives."""
    rng = random.Random(7)
    registry = Registry()
    check = Check("tcp", "127.0.0.1:1")
    kept = MaterialCache()
    keys: list[tuple[tuple[str, ...], Callable[[Instance], bool] | None]] = [
        ((), None),
        (("tag", "blue"), lambda i: "blue" in i.reg.tags),
    ]

    def material(fresh: bool, key: tuple[str, ...]) -> Material:
        cache = MaterialCache() if fresh else kept
        tags = key[1:]
        member = (lambda i: all(t in i.reg.tags for t in tags)) if key else (lambda i: True)
        candidates = (lambda: registry.tagged("big", tags)) if key else (lambda: None)
        return cache.get(registry, "big", key, candidates, ORIGIN, member)

    for step in range(600):
        ids = list(registry.instances("big"))
        roll = rng.random()
        if roll < 0.45 or not ids:
            n = rng.randrange(300)
            address = (
                ipaddress.IPv4Address(f"10.0.{n >> 8}.{n & 255}")
                if n % 3
                else ipaddress.IPv6Address(f"fd00::{n:x}")
            )
            registry.register(
                Registration(
                    "big", f"i{n}" + "x" * (n % 4), address, 80,
                    weight=1 + n % 5, priority=n % 3 // 2, ttl=0,
                    dns_ttl=5 + n % 7, tags=("blue",) if n % 2 else (),
                    checks=(check,) if n % 4 == 0 else (),
                ),
                now=0.0,
            )  # fmt: skip
        elif roll < 0.65:
            registry.deregister("big", rng.choice(ids))
        elif roll < 0.8:
            target = registry.get("big", rng.choice(ids))
            assert target is not None
            if target.checks:
                state = rng.choice([Health.PASSING, Health.CRITICAL])
                registry.set_check_status("big", target.reg.id, 0, CheckStatus(state=state))
        elif roll < 0.9:
            reason = rng.choice([None, "drain"])
            registry.set_maintenance("big", rng.choice(ids), reason)
        else:
            registry.stage()  # a write whose commit failed: undone without a trace
            change = registry.deregister("big", rng.choice(ids))
            registry.unstage([change])
        if step % 3 == 0:
            continue  # several writes between two queries too
        for key, _ in keys:
            patched, fresh = material(False, key), material(True, key)
            assert patched.served == fresh.served, (step, key)
            assert _pools_of(patched) == _pools_of(fresh), (step, key)
    assert kept.patches > 100
    assert kept.builds <= 4, "patched, not rebuilt, all along"


def test_dnssd_browsing_a_huge_service_is_bounded_and_follows_changes() -> None:
    """RFC 6763 §4 PTR browsing of 20 000 instances: the first ids that fit, "N of M"
    over TCP, and a change is patched into the kept material (no rebuild)."""
    registry = registry_of(20_000)
    responder = Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(8))
    q = dns.message.make_query("_big._tcp.service.local", "PTR", use_edns=0)

    def browse() -> list[str]:
        responder.cache.clear()
        reply = dns.message.from_wire(responder.respond(q.to_wire(), tcp=True) or b"")
        assert not reply.flags & dns.flags.TC
        texts = [o.text for o in reply.options if isinstance(o, dns.edns.EDEOption)]
        names = [r.target.labels[0].decode() for r in reply.answer[0]]
        assert texts == [f"{len(names)} of {registry_size()} records"]
        return names

    def registry_size() -> int:
        return len(registry.instances("big"))

    first = browse()
    assert 1000 < len(first) < 20_000
    assert first == sorted(f"i{n}" for n in range(20_000))[: len(first)]
    builds = responder.materials.builds
    registry.deregister("big", first[0])
    registry.register(
        Registration("big", "a0", ipaddress.IPv4Address("10.9.9.9"), 80, ttl=0), now=0.0
    )
    second = browse()
    assert second[0] == "a0"
    assert first[0] not in second
    assert second[1:] == first[1 : len(second)]
    assert responder.materials.builds == builds, "patched, not rebuilt"


def test_one_weight_for_all_draws_a_uniform_sample_without_repeats() -> None:
    """Every member of equal weight (the common case): each draw has no instance twice,
    and over many draws every instance comes up about as often (a uniform sample); one
    heavier instance and the draw is weighted again."""
    registry = registry_of(3_000)
    material = MaterialCache().get(registry, "big", (), lambda: None, ORIGIN, lambda i: True)
    pool = material.pool(A)
    rng = random.Random(9)
    seen: Counter[str] = Counter()
    for _ in range(400):
        chosen = pool.draw(100, rng)
        assert len({i.reg.id for i in chosen}) == len(chosen) == 100
        seen.update(i.reg.id for i in chosen)
    # 40 000 picks over 3 000 instances: ~13.3 each, every one drawn, none far off.
    assert len(seen) == 3_000
    assert max(seen.values()) < 35
    heavy = registry_of(3_000, heavy=30)
    material = MaterialCache().get(heavy, "big", (), lambda: None, ORIGIN, lambda i: True)
    picks = Counter(i.reg.id for _ in range(200) for i in material.pool(A).draw(100, rng))
    # Uniform would give the 30 heavy ones 1 place in 100 per draw; weight 100 gives ~27.
    assert sum(picks[f"i{n}"] for n in range(30)) > 200 * 20
