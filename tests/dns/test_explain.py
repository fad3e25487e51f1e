"""The pure explainer: one test per reason an instance is, or is not, in the answer."""

from __future__ import annotations

import ipaddress
import random

import pytest

from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Check, CheckStatus, Health, Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Change, Registry
from dnsreg.dns.answers import Settings
from dnsreg.dns.explain import Explanation, Verdict, explain, parse_question
from dnsreg.dns.zones import StaticZones, zones_from_text

ORIGIN = parse_name("service.local")
NOW = 1_000_000.0
CHECK = Check(kind="http", target="http://10.0.0.5:8080/health")


def reg(iid: str, address: str, **kw: object) -> Registration:
    return Registration(
        service="web", id=iid, address=ipaddress.ip_address(address), port=8080, **kw
    )  # type: ignore[arg-type]


def run(
    registry: Registry,
    name: str,
    qtype: str = "A",
    *,
    static: StaticZones | None = None,
    settings: Settings | None = None,
    departed: list[Change] | None = None,
    now: float = NOW,
) -> Explanation:
    return explain(
        parse_question(name, qtype),
        registry,
        static or StaticZones(),
        settings or Settings(origin=ORIGIN),
        random.Random(7),
        now=now,
        departed=departed or [],
    )


def verdict(e: Explanation, iid: str) -> Verdict:
    (found,) = [v for v in e.instances if v.id == iid]
    return found


def codes(v: Verdict) -> list[str]:
    return [r.code for r in v.reasons]


def fail(registry: Registry, iid: str, output: str, since: float) -> None:
    status = CheckStatus(
        state=Health.CRITICAL,
        output=output,
        consecutive=2,
        last_run=since + 5,
        critical_since=since,
        last_result=Health.CRITICAL,
    )
    registry.set_check_status("web", iid, 0, status)


def passing(registry: Registry, iid: str) -> None:
    status = CheckStatus(state=Health.PASSING, output="HTTP 200", consecutive=1, last_run=NOW)
    registry.set_check_status("web", iid, 0, status)


def test_answer_records_in_presentation_format_and_instance_in_answer() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=30.0), NOW)
    e = run(r, "web.service.local", "A")
    assert e.rcode == "NOERROR"
    assert e.answer == ("web.service.local. 5 IN A 10.0.0.5",)
    v = verdict(e, "web-1")
    assert v.in_answer
    assert codes(v) == ["lease"]
    assert "lease ends in 30.0s" in v.reasons[0].text


def test_lease_expired_instance_is_explained_from_its_removal() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=10.0), NOW)
    r.register(reg("web-2", "10.0.0.6", ttl=0), NOW)
    departed = r.expire_due(NOW + 11)
    e = run(r, "web.service.local", departed=departed, now=NOW + 20)
    v = verdict(e, "web-1")
    assert not v.in_answer
    assert codes(v) == ["lease_expired"]
    assert "lease expired at 1970-01-12T13:46:50Z (10s ago)" in v.reasons[0].text
    assert verdict(e, "web-2").in_answer


def test_a_service_whose_last_instance_expired_is_still_explained() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=10.0), NOW)
    departed = r.expire_due(NOW + 10)
    e = run(r, "web.service.local", departed=departed, now=NOW + 12)
    assert e.rcode == "NXDOMAIN"
    assert e.why == (
        "no service 'web' is registered in service.local.",
        "the last instances of 'web' left recently (see below)",
    )
    assert e.service == "web"
    assert codes(verdict(e, "web-1")) == ["lease_expired"]


def test_check_critical_since_with_its_output() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", checks=(CHECK,), ttl=0), NOW)
    r.register(reg("web-2", "10.0.0.6", ttl=0), NOW)
    fail(r, "web-1", "HTTP 500 Internal Server Error", since=NOW - 42)
    e = run(r, "web.service.local")
    v = verdict(e, "web-1")
    assert not v.in_answer
    assert codes(v) == ["check_critical"]
    assert v.reasons[0].text == (
        "check c0 (http http://10.0.0.5:8080/health) critical since "
        "1970-01-12T13:45:58Z (42s ago): HTTP 500 Internal Server Error"
    )
    assert e.answer == ("web.service.local. 5 IN A 10.0.0.6",)


def test_check_not_run_yet() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", checks=(CHECK,), ttl=0), NOW)
    e = run(r, "web.service.local")
    assert e.rcode == "NOERROR"
    assert e.answer == ()
    assert codes(verdict(e, "web-1")) == ["check_pending"]
    assert any("no instance is served" in w for w in e.why)


def test_maintenance_with_its_reason() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=0), NOW)
    r.set_maintenance("web", "web-1", "kernel upgrade")
    v = verdict(run(r, "web.service.local"), "web-1")
    assert not v.in_answer
    assert [(x.code, x.text) for x in v.reasons] == [
        ("maintenance", 'in maintenance ("kernel upgrade")')
    ]


def test_tag_mismatch_names_the_missing_tag() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", tags=("eu",), ttl=0), NOW)
    r.register(reg("web-2", "10.0.0.6", tags=("us",), ttl=0), NOW)
    e = run(r, "eu.web.service.local")
    assert e.answer == ("eu.web.service.local. 5 IN A 10.0.0.5",)
    assert verdict(e, "web-1").in_answer
    v = verdict(e, "web-2")
    assert not v.in_answer
    assert v.reasons[0].code == "tag_mismatch"
    assert v.reasons[0].text == "tag mismatch: lacks tag(s) eu (has: us)"


def test_panic_mode_serves_a_critical_instance_and_says_so() -> None:
    r = Registry(panic_threshold=0.5)
    for n in (1, 2, 3):
        r.register(reg(f"web-{n}", f"10.0.0.{n}", checks=(CHECK,), ttl=0), NOW)
    passing(r, "web-1")
    fail(r, "web-2", "connection refused", since=NOW - 3)
    fail(r, "web-3", "connection refused", since=NOW - 3)
    e = run(r, "web.service.local")
    assert len(e.answer) == 3
    assert any("panic threshold" in x for x in e.ede)
    v = verdict(e, "web-2")
    assert v.in_answer
    assert v.reasons[0].code == "panic"
    assert "only 1 of 3 checked instances are healthy" in v.reasons[0].text
    assert codes(verdict(e, "web-1")) == []


def test_answer_cap_not_chosen_this_time() -> None:
    r = Registry()
    for n in range(1, 6):
        r.register(reg(f"web-{n}", f"10.0.0.{n}", ttl=0), NOW)
    e = run(r, "web.service.local", settings=Settings(origin=ORIGIN, max_answers=2))
    assert len(e.answer) == 2
    chosen = [v for v in e.instances if v.in_answer]
    left = [v for v in e.instances if not v.in_answer]
    assert len(chosen) == 2
    assert len(left) == 3
    for v in left:
        assert codes(v) == ["not_chosen"]
        assert "capped at 2 (max_answers)" in v.reasons[0].text


def test_reply_too_large_for_udp_is_flagged() -> None:
    r = Registry()
    for n in range(1, 120):
        r.register(reg(f"web-{n}", f"10.0.{n}.1", ttl=0), NOW)
    e = run(r, "web.service.local")
    assert any("truncated (TC set)" in w for w in e.why)


def test_ipv6_instance_is_not_in_a_answers() -> None:
    r = Registry()
    r.register(reg("web-1", "2001:db8::1", ttl=0), NOW)
    r.register(reg("web-2", "10.0.0.2", ttl=0), NOW)
    v = verdict(run(r, "web.service.local", "A"), "web-1")
    assert codes(v) == ["address_family"]
    assert verdict(run(r, "web.service.local", "AAAA"), "web-1").in_answer


def test_srv_answer_and_instance_name() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.1", ttl=0), NOW)
    r.register(reg("web-2", "10.0.0.2", ttl=0), NOW)
    e = run(r, "_web._tcp.service.local", "SRV")
    assert all(v.in_answer for v in e.instances)
    e = run(r, "web-1.web.service.local", "A")
    assert verdict(e, "web-1").in_answer
    assert codes(verdict(e, "web-2")) == ["other_name"]


def test_name_clash_with_a_static_zone() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=0), NOW)
    zone = zones_from_text(
        "$TTL 60\n@ IN SOA ns h 1 3600 600 86400 60\n@ IN NS ns\n@ IN A 192.0.2.80\n"
        "ns IN A 192.0.2.53\n",
        "web.service.local",
        ORIGIN,
    )
    e = run(r, "web.service.local", static=StaticZones({zone.origin: zone}))
    assert e.answer == ("web.service.local. 60 IN A 192.0.2.80",)
    assert any("static zone web.service.local." in w for w in e.why)
    v = verdict(e, "web-1")
    assert not v.in_answer
    assert codes(v) == ["static_clash"]


def test_unknown_name_nxdomain_and_why() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=0), NOW)
    e = run(r, "nosuch.service.local")
    assert e.rcode == "NXDOMAIN"
    assert e.service is None
    assert e.instances == ()
    assert e.why == ("no service 'nosuch' is registered in service.local.",)
    assert e.authority
    assert " SOA " in e.authority[0]
    e = run(r, "canary.web.service.local")
    assert e.rcode == "NXDOMAIN"
    assert "no instance with id 'canary' and no instance tagged 'canary'" in e.why[0]


def test_outside_every_zone_refused_and_why() -> None:
    r = Registry()
    r.register(reg("web-1", "10.0.0.5", ttl=0), NOW)
    e = run(r, "web.example.com")
    assert e.rcode == "REFUSED"
    assert e.why == (
        "web.example.com. is in no zone this server is authoritative for (service.local.); "
        "did you mean web.service.local.?",
    )
    assert run(r, "service.local", "AXFR").why[0].startswith("zone transfers are not offered")


@pytest.mark.parametrize(
    ("name", "qtype", "field"),
    [("", "A", "name"), ("web.service.local", "NOPE", "type"), ("bad..name", "A", "name")],
)
def test_bad_questions_are_refused_with_the_field(name: str, qtype: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_question(name, qtype)
    assert info.value.field == field
