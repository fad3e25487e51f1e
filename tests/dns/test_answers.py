"""Table-driven tests of the pure answer builder, written as zone-file text (CoreDNS style).

Each case names a question and the exact sections of the reply, one record per
line in master-file form. Shuffled sections are compared as sets.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

import pytest

from dnsreg.core.model import Check, CheckStatus, Health, Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Kind, Question, Reply, Settings, answer
from dnsreg.dns.records import ANY, AXFR, TYPE_NAMES
from dnsreg.dns.zones import StaticZones, zones_from_text

ORIGIN = parse_name("service.local")
TYPES = {v: k for k, v in TYPE_NAMES.items()} | {"ANY": ANY, "AXFR": AXFR}

EXAMPLE_ZONE = """
$TTL 300
@       IN SOA ns1 hostmaster 7 3600 600 86400 60
        IN NS  ns1
ns1     IN A   192.0.2.1
www     IN CNAME web.service.local.
alias   IN CNAME mail
mail    IN MX  10 mx
mx      IN A   192.0.2.25
*.wild  IN TXT "wild"
a.b.c   IN A   192.0.2.9
sub     IN NS  ns.sub
ns.sub  IN A   192.0.2.53
"""

LOCAL_STATIC = """
$TTL 60
docs    IN A 192.0.2.80
"""


def reg(service: str, iid: str, address: str, **kw: object) -> Registration:
    return Registration(
        service=service, id=iid, address=ipaddress.ip_address(address), port=8080, **kw
    )  # type: ignore[arg-type]


def build_registry() -> Registry:
    r = Registry()
    r.register(reg("web", "web-1", "10.0.0.5", tags=("primary", "eu"), meta=(("version", "2"),)), 0)
    r.register(reg("web", "web-2", "10.0.0.6", tags=("eu",)), 0)
    r.register(reg("web", "web-6", "2001:db8::6"), 0)
    r.register(reg("dns", "d1", "10.0.1.1", proto="udp", dns_ttl=30), 0)
    r.register(reg("db", "db-1", "10.0.2.1"), 0)
    r.set_maintenance("db", "db-1", "deploy")
    return r


@dataclass
class Case:
    qname: str
    qtype: str
    kind: Kind
    answer: list[str] = field(default_factory=list)
    authority: list[str] = field(default_factory=list)
    additional: list[str] = field(default_factory=list)
    aa: bool = True
    tcp: bool = False
    ede: bool = False


SOA = "service.local. 5 IN SOA ns.service.local. hostmaster.service.local. 6 3600 600 86400 5"
EX_SOA = "example.com. 60 IN SOA ns1.example.com. hostmaster.example.com. 7 3600 600 86400 60"

CASES = [
    # --- the dynamic zone's own names
    Case("service.local.", "SOA", Kind.ANSWER, [SOA]),
    Case(
        "service.local.",
        "NS",
        Kind.ANSWER,
        ["service.local. 3600 IN NS ns.service.local."],
        additional=["ns.service.local. 3600 IN A 127.0.0.1"],
    ),
    Case("service.local.", "A", Kind.NODATA, authority=[SOA]),
    Case("ns.service.local.", "A", Kind.ANSWER, ["ns.service.local. 3600 IN A 127.0.0.1"]),
    Case("ns.service.local.", "AAAA", Kind.NODATA, authority=[SOA]),
    # --- services
    Case(
        "web.service.local.",
        "A",
        Kind.ANSWER,
        ["web.service.local. 5 IN A 10.0.0.5", "web.service.local. 5 IN A 10.0.0.6"],
    ),
    Case("web.service.local.", "AAAA", Kind.ANSWER, ["web.service.local. 5 IN AAAA 2001:db8::6"]),
    Case(
        "web.service.local.",
        "SRV",
        Kind.ANSWER,
        [
            "web.service.local. 5 IN SRV 0 1 8080 web-1.web.service.local.",
            "web.service.local. 5 IN SRV 0 1 8080 web-2.web.service.local.",
            "web.service.local. 5 IN SRV 0 1 8080 web-6.web.service.local.",
        ],
        additional=[
            "web-1.web.service.local. 5 IN A 10.0.0.5",
            "web-2.web.service.local. 5 IN A 10.0.0.6",
            "web-6.web.service.local. 5 IN AAAA 2001:db8::6",
        ],
    ),
    Case("web.service.local.", "TXT", Kind.NODATA, authority=[SOA]),
    Case(
        "web.service.local.",
        "ANY",
        Kind.ANSWER,
        ["web.service.local. 5 IN A 10.0.0.5", "web.service.local. 5 IN A 10.0.0.6"],
    ),
    Case(
        "web.service.local.",
        "ANY",
        Kind.ANSWER,
        tcp=True,
        answer=[
            "web.service.local. 5 IN A 10.0.0.5",
            "web.service.local. 5 IN A 10.0.0.6",
            "web.service.local. 5 IN AAAA 2001:db8::6",
            "web.service.local. 5 IN SRV 0 1 8080 web-1.web.service.local.",
            "web.service.local. 5 IN SRV 0 1 8080 web-2.web.service.local.",
            "web.service.local. 5 IN SRV 0 1 8080 web-6.web.service.local.",
        ],
        additional=[
            "web-1.web.service.local. 5 IN A 10.0.0.5",
            "web-2.web.service.local. 5 IN A 10.0.0.6",
            "web-6.web.service.local. 5 IN AAAA 2001:db8::6",
        ],
    ),
    # --- tags: one, two, unknown, a pair nobody carries
    Case(
        "primary.web.service.local.",
        "A",
        Kind.ANSWER,
        ["primary.web.service.local. 5 IN A 10.0.0.5"],
    ),
    Case(
        "eu.web.service.local.",
        "A",
        Kind.ANSWER,
        ["eu.web.service.local. 5 IN A 10.0.0.5", "eu.web.service.local. 5 IN A 10.0.0.6"],
    ),
    Case(
        "primary.eu.web.service.local.",
        "A",
        Kind.ANSWER,
        ["primary.eu.web.service.local. 5 IN A 10.0.0.5"],
    ),
    Case("nosuch.web.service.local.", "A", Kind.NXDOMAIN, authority=[SOA]),
    Case("primary.nosuch.web.service.local.", "A", Kind.NXDOMAIN, authority=[SOA]),
    # --- an instance: A, SRV with glue, TXT of its meta, AAAA it does not have
    Case(
        "web-1.web.service.local.", "A", Kind.ANSWER, ["web-1.web.service.local. 5 IN A 10.0.0.5"]
    ),
    Case(
        "web-1.web.service.local.",
        "SRV",
        Kind.ANSWER,
        ["web-1.web.service.local. 5 IN SRV 0 1 8080 web-1.web.service.local."],
        additional=["web-1.web.service.local. 5 IN A 10.0.0.5"],
    ),
    Case(
        "web-1.web.service.local.",
        "TXT",
        Kind.ANSWER,
        ['web-1.web.service.local. 5 IN TXT "version=2"'],
    ),
    Case("web-1.web.service.local.", "AAAA", Kind.NODATA, authority=[SOA]),
    Case("web-2.web.service.local.", "TXT", Kind.NODATA, authority=[SOA]),
    # --- RFC 2782 form, protocol respected, empty non-terminals
    Case(
        "_web._tcp.service.local.",
        "SRV",
        Kind.ANSWER,
        [
            "_web._tcp.service.local. 5 IN SRV 0 1 8080 web-1.web.service.local.",
            "_web._tcp.service.local. 5 IN SRV 0 1 8080 web-2.web.service.local.",
            "_web._tcp.service.local. 5 IN SRV 0 1 8080 web-6.web.service.local.",
        ],
        additional=[
            "web-1.web.service.local. 5 IN A 10.0.0.5",
            "web-2.web.service.local. 5 IN A 10.0.0.6",
            "web-6.web.service.local. 5 IN AAAA 2001:db8::6",
        ],
    ),
    Case("_web._tcp.service.local.", "A", Kind.NODATA, authority=[SOA]),
    Case("_web._udp.service.local.", "SRV", Kind.NXDOMAIN, authority=[SOA]),
    Case(
        "_dns._udp.service.local.",
        "SRV",
        Kind.ANSWER,
        ["_dns._udp.service.local. 30 IN SRV 0 1 8080 d1.dns.service.local."],
        additional=["d1.dns.service.local. 30 IN A 10.0.1.1"],
    ),
    Case("_tcp.service.local.", "SRV", Kind.NODATA, authority=[SOA]),
    Case("_udp.service.local.", "A", Kind.NODATA, authority=[SOA]),
    # --- registered but nothing served (maintenance): NODATA, not NXDOMAIN
    Case("db.service.local.", "A", Kind.NODATA, authority=[SOA]),
    Case("db-1.db.service.local.", "A", Kind.NODATA, authority=[SOA]),
    Case("nope.service.local.", "A", Kind.NXDOMAIN, authority=[SOA]),
    # --- static records inside the dynamic zone
    Case("docs.service.local.", "A", Kind.ANSWER, ["docs.service.local. 60 IN A 192.0.2.80"]),
    Case("docs.service.local.", "MX", Kind.NODATA, authority=[SOA]),
    # --- a static zone: CNAME into the dynamic zone, CNAME chain, MX glue, wildcard, ENT
    Case(
        "www.example.com.",
        "A",
        Kind.ANSWER,
        [
            "www.example.com. 300 IN CNAME web.service.local.",
            "web.service.local. 5 IN A 10.0.0.5",
            "web.service.local. 5 IN A 10.0.0.6",
        ],
    ),
    Case(
        "alias.example.com.",
        "MX",
        Kind.ANSWER,
        [
            "alias.example.com. 300 IN CNAME mail.example.com.",
            "mail.example.com. 300 IN MX 10 mx.example.com.",
        ],
        additional=["mx.example.com. 300 IN A 192.0.2.25"],
    ),
    Case("x.wild.example.com.", "TXT", Kind.ANSWER, ['x.wild.example.com. 300 IN TXT "wild"']),
    Case("b.c.example.com.", "A", Kind.NODATA, authority=[EX_SOA]),
    Case("zz.example.com.", "A", Kind.NXDOMAIN, authority=[EX_SOA]),
    Case(
        "host.sub.example.com.",
        "A",
        Kind.REFERRAL,
        aa=False,
        authority=["sub.example.com. 300 IN NS ns.sub.example.com."],
        additional=["ns.sub.example.com. 300 IN A 192.0.2.53"],
    ),
    # --- outside every zone, zone transfers
    Case("example.org.", "A", Kind.REFUSED, aa=False),
    Case("service.local.", "AXFR", Kind.REFUSED, aa=False),
]


def _static() -> StaticZones:
    example = zones_from_text(EXAMPLE_ZONE, "example.com", ORIGIN)
    local = zones_from_text(LOCAL_STATIC, "service.local", ORIGIN)
    return StaticZones({example.origin: example, local.origin: local})


def _texts(records: tuple[object, ...]) -> list[str]:
    return sorted(r.text() for r in records)  # type: ignore[attr-defined]


def _norm(lines: list[str]) -> list[str]:
    return sorted(" ".join(line.split()) for line in lines)


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.qname}{c.qtype}{'/tcp' if c.tcp else ''}"
)
def test_answer_table(case: Case) -> None:
    registry = build_registry()
    reply = answer(
        Question(parse_name(case.qname), TYPES[case.qtype], tcp=case.tcp),
        registry,
        _static(),
        Settings(origin=ORIGIN),
        random.Random(1),
    )
    assert reply.kind is case.kind
    assert reply.authoritative is case.aa
    assert _texts(reply.answer) == _norm(case.answer)
    assert _texts(reply.authority) == _norm(case.authority)
    assert _texts(reply.additional) == _norm(case.additional)


def _ask(registry: Registry, name: str, qtype: str, **settings: object) -> Reply:
    return answer(
        Question(parse_name(name), TYPES[qtype]),
        registry,
        StaticZones(),
        Settings(origin=ORIGIN, **settings),  # type: ignore[arg-type]
        random.Random(7),
    )


def test_weights_steer_the_first_answer() -> None:
    r = Registry()
    r.register(reg("api", "heavy", "10.1.0.1", weight=9), 0)
    r.register(reg("api", "light", "10.1.0.2", weight=1), 0)
    rng = random.Random(3)
    first = [
        str(answer(Question(parse_name("api.service.local"), 1), r, StaticZones(),
                   Settings(origin=ORIGIN), rng).answer[0].rdata.text())
        for _ in range(2000)
    ]  # fmt: skip
    share = first.count("10.1.0.1") / len(first)
    assert 0.85 < share < 0.95  # 9:1 weights


def test_priority_orders_before_weight() -> None:
    r = Registry()
    r.register(reg("api", "backup", "10.1.0.9", priority=10, weight=100), 0)
    r.register(reg("api", "main", "10.1.0.1", priority=0), 0)
    reply = _ask(r, "api.service.local", "SRV")
    assert reply.answer[0].text().endswith("main.api.service.local.")


def test_max_answers_caps_address_records() -> None:
    r = Registry()
    for n in range(10):
        r.register(reg("big", f"i{n}", f"10.2.0.{n + 1}"), 0)
    assert len(_ask(r, "big.service.local", "A", max_answers=3).answer) == 3
    assert len(_ask(r, "big.service.local", "A").answer) == 10


def test_rrset_ttl_is_the_smallest_dns_ttl() -> None:
    # RFC 2181 §5.2: all records of one RRset share a TTL.
    r = Registry()
    r.register(reg("mix", "a", "10.3.0.1", dns_ttl=30), 0)
    r.register(reg("mix", "b", "10.3.0.2", dns_ttl=10), 0)
    assert {rec.ttl for rec in _ask(r, "mix.service.local", "A").answer} == {10}


def test_soa_serial_follows_the_revision() -> None:
    r = build_registry()
    before = _ask(r, "service.local", "SOA").answer[0].text()
    r.deregister("web", "web-2")
    after = _ask(r, "service.local", "SOA").answer[0].text()
    assert " 6 3600 " in before
    assert " 7 3600 " in after


def test_panic_serves_everything_live_and_says_so() -> None:
    r = Registry(panic_threshold=0.5)
    probe = Check(kind="tcp", target="127.0.0.1:9")
    for n in range(4):
        # Three instances carry a check that has run and failed.
        checks = (probe,) if n < 3 else ()
        r.register(reg("pay", f"p{n}", f"10.4.0.{n + 1}", checks=checks), 0)
        if checks:
            failed = CheckStatus(state=Health.CRITICAL, last_run=0.0, last_result=Health.CRITICAL)
            r.set_check_status("pay", f"p{n}", 0, failed)
    reply = _ask(r, "pay.service.local", "A")
    assert len(reply.answer) == 4  # 1 of 4 served < 50 %: serve every live one
    assert reply.ede
    assert "pay" in reply.ede[0][1]
    for n in range(3):
        r.set_check_status("pay", f"p{n}", 0, CheckStatus(state=Health.PASSING, last_run=1.0))
    reply = _ask(r, "pay.service.local", "A")
    assert len(reply.answer) == 4
    assert not reply.ede
    r.set_maintenance("pay", "p3", "deploy")
    assert len(_ask(r, "pay.service.local", "A").answer) == 3  # 75 % served: no panic
