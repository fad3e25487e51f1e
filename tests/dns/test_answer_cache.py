"""The cached answer path: exact invalidation, letter case, shuffling, bounds.

Driven through Responder.respond with real wire packets (dnspython builds and
parses them), so what is checked is what a client would receive.
"""

from __future__ import annotations

import ipaddress
import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from dnsreg.core.model import CheckStatus, Health, Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Settings
from dnsreg.dns.responder import Responder
from dnsreg.dns.zones import StaticZones, zones_from_text

ORIGIN = parse_name("service.local")


def reg(service: str, iid: str, address: str, **kw: object) -> Registration:
    return Registration(
        service=service, id=iid, address=ipaddress.ip_address(address), port=80, **kw
    )  # type: ignore[arg-type]


@pytest.fixture
def setup() -> tuple[Registry, Responder]:
    registry = Registry()
    for n in range(3):
        registry.register(reg("web", f"w{n}", f"10.0.0.{n + 1}"), 0)
    registry.register(reg("db", "d0", "10.0.1.1"), 0)
    return registry, Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(5))


def ask(responder: Responder, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    wire = responder.respond(query.to_wire(), tcp=False)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id
    return reply


def addresses(reply: dns.message.Message) -> set[str]:
    return {r.to_text() for rrset in reply.answer for r in rrset}


def test_repeated_queries_are_served_from_the_cache(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    ask(responder, "db.service.local")
    misses = responder.cache.misses
    for _ in range(50):
        assert addresses(ask(responder, "db.service.local")) == {"10.0.1.1"}
    assert responder.cache.misses == misses
    assert responder.counts()[dns.rcode.NOERROR] == 51


@pytest.mark.parametrize("edns", [False, True])
def test_a_change_is_visible_to_the_very_next_query(
    setup: tuple[Registry, Responder], edns: bool
) -> None:
    registry, responder = setup
    kw = {"use_edns": 0} if edns else {}
    for _ in range(20):  # warm every shuffled variant
        ask(responder, "web.service.local", **kw)
    registry.register(reg("web", "w9", "10.0.0.9"), 0)
    assert "10.0.0.9" in addresses(ask(responder, "web.service.local", **kw))
    registry.deregister("web", "w0")
    assert "10.0.0.1" not in addresses(ask(responder, "web.service.local", **kw))
    registry.register(reg("web", "w1", "10.0.0.2", checks=()), 0)
    registry.set_maintenance("web", "w1", "deploy")
    assert "10.0.0.2" not in addresses(ask(responder, "web.service.local", **kw))


def test_health_change_is_visible_at_once(setup: tuple[Registry, Responder]) -> None:
    registry, responder = setup
    from dnsreg.core.model import Check

    registry.register(reg("api", "a0", "10.0.2.1", checks=(Check("tcp", "127.0.0.1:9"),)), 0)
    assert ask(responder, "api.service.local").answer == []  # not passing yet: NODATA
    registry.set_check_status("api", "a0", 0, CheckStatus(state=Health.PASSING))
    assert addresses(ask(responder, "api.service.local")) == {"10.0.2.1"}


def test_churn_on_one_service_keeps_other_entries(setup: tuple[Registry, Responder]) -> None:
    registry, responder = setup
    ask(responder, "db.service.local")
    misses = responder.cache.misses
    for n in range(20):
        registry.register(reg("web", f"x{n}", f"10.9.0.{n + 1}"), 0)
        ask(responder, "db.service.local")
    assert responder.cache.misses == misses


def test_negative_answers_follow_the_soa_serial(setup: tuple[Registry, Responder]) -> None:
    registry, responder = setup
    first = ask(responder, "nope.service.local")
    assert first.rcode() == dns.rcode.NXDOMAIN
    registry.register(reg("nope", "n0", "10.0.3.1"), 0)
    second = ask(responder, "nope.service.local")
    assert second.rcode() == dns.rcode.NOERROR


def test_cached_replies_echo_the_clients_letter_case(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    ask(responder, "db.service.local")
    for spelling in ("DB.service.local", "dB.SeRvIcE.LoCaL", "db.SERVICE.local"):
        query = dns.message.make_query(spelling, "A")
        raw = query.to_wire()
        wire = responder.respond(raw, tcp=False)
        assert wire is not None
        question_end = 12 + len(spelling) + 2 + 4
        assert wire[12:question_end] == raw[12:question_end]
        assert dns.message.from_wire(wire).question[0].name.to_text() == spelling + "."


def test_shuffled_orders_rotate_and_weights_still_apply() -> None:
    registry = Registry()
    for n in range(4):
        registry.register(reg("web", f"w{n}", f"10.0.0.{n + 1}"), 0)
    responder = Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(9))
    firsts = set()
    for _ in range(40):
        reply = ask(responder, "web.service.local")
        firsts.add(next(iter(reply.answer[0])).to_text())
        assert len(addresses(reply)) == 4
    assert len(firsts) > 1  # not one frozen order


def test_edns_shapes_are_kept_apart(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    plain = ask(responder, "db.service.local")
    edns = ask(responder, "db.service.local", use_edns=0, want_dnssec=True)
    assert plain.opt is None
    assert edns.opt is not None
    assert edns.ednsflags & dns.flags.DO  # RFC 3225: DO copied
    again = ask(responder, "db.service.local")
    assert again.opt is None


def test_edns_options_do_not_defeat_the_cache(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    import dns.edns

    for n in range(5):
        cookie = dns.edns.GenericOption(dns.edns.COOKIE, bytes([n]) * 8)
        ask(responder, "db.service.local", use_edns=0, options=[cookie])
    assert responder.cache.misses == 1


def test_zone_reload_clears_the_cache(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    assert ask(responder, "docs.service.local").rcode() == dns.rcode.NXDOMAIN
    zone = zones_from_text("$TTL 60\ndocs IN A 192.0.2.80\n", "service.local", ORIGIN)
    responder.static = StaticZones({zone.origin: zone})
    assert addresses(ask(responder, "docs.service.local")) == {"192.0.2.80"}


def test_the_cache_is_bounded() -> None:
    registry = Registry()
    responder = Responder(
        registry, StaticZones(), Settings(origin=ORIGIN), random.Random(1), cache_entries=100
    )
    for n in range(1000):
        ask(responder, f"n{n}.service.local")
    assert len(responder.cache.entries) <= 100
    assert responder.counts()[dns.rcode.NXDOMAIN] == 1000


def test_stale_marking_is_part_of_the_cached_reply(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    assert not ask(responder, "db.service.local", use_edns=0).options
    responder.stale = True
    (ede,) = ask(responder, "db.service.local", use_edns=0).options
    assert ede.otype == 15
    responder.stale = False
    assert not ask(responder, "db.service.local", use_edns=0).options


def test_zone_file_answers_are_never_marked_stale(setup: tuple[Registry, Responder]) -> None:
    _, responder = setup
    zone = zones_from_text(
        "$TTL 60\n@ IN SOA ns h 1 2 3 4 5\n@ IN NS ns\nns IN A 192.0.2.1\n", "example.test", ORIGIN
    )
    responder.static = StaticZones({zone.origin: zone})
    responder.stale = True
    for _ in range(2):  # built, then from the cache
        assert not ask(responder, "ns.example.test", use_edns=0).options
        assert ask(responder, "db.service.local", use_edns=0).options  # registry data: marked
