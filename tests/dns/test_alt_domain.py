"""Consul's DNS names (``alt_domain``): the same answer builder under ``service.<alt>``."""

from __future__ import annotations

import random

import pytest

from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Kind, Question, Settings, answer, with_alt_domain
from dnsreg.dns.zones import StaticZones
from tests.dns.test_answers import TYPES, _norm, _texts, reg

ORIGIN = parse_name("service.local")
SETTINGS = with_alt_domain(Settings(origin=ORIGIN), parse_name("consul"))
SOA = "service.consul. 5 IN SOA ns.service.consul. hostmaster.service.consul. 3 3600 600 86400 5"


def registry() -> Registry:
    r = Registry()
    r.register(reg("web", "web-1", "10.0.0.5", tags=("primary",)), 0)
    r.register(reg("web", "web-2", "10.0.0.6"), 0)
    r.register(reg("dns", "d1", "10.0.1.1", proto="udp"), 0)
    return r


def ask(name: str, qtype: str, settings: Settings = SETTINGS) -> tuple[Kind, list[str], list[str]]:
    reply = answer(
        Question(parse_name(name), TYPES[qtype]), registry(), StaticZones(), settings,
        random.Random(1),
    )  # fmt: skip
    return reply.kind, _texts(reply.answer), _texts(reply.authority + reply.additional)


@pytest.mark.parametrize(
    ("name", "qtype", "kind", "records"),
    [
        (
            "web.service.consul.",
            "A",
            Kind.ANSWER,
            ["web.service.consul. 5 IN A 10.0.0.5", "web.service.consul. 5 IN A 10.0.0.6"],
        ),
        (
            "primary.web.service.consul.",
            "A",
            Kind.ANSWER,
            ["primary.web.service.consul. 5 IN A 10.0.0.5"],
        ),
        (
            "web-2.web.service.consul.",
            "A",
            Kind.ANSWER,
            ["web-2.web.service.consul. 5 IN A 10.0.0.6"],
        ),
        (
            "primary.web.service.consul.",
            "SRV",
            Kind.ANSWER,
            ["primary.web.service.consul. 5 IN SRV 0 1 8080 web-1.web.service.consul."],
        ),
        # RFC 2782 form: _<svc>._tcp is every TCP instance, _<svc>._<tag> selects by tag.
        (
            "_web._tcp.service.consul.",
            "SRV",
            Kind.ANSWER,
            [
                "_web._tcp.service.consul. 5 IN SRV 0 1 8080 web-1.web.service.consul.",
                "_web._tcp.service.consul. 5 IN SRV 0 1 8080 web-2.web.service.consul.",
            ],
        ),
        (
            "_web._primary.service.consul.",
            "SRV",
            Kind.ANSWER,
            ["_web._primary.service.consul. 5 IN SRV 0 1 8080 web-1.web.service.consul."],
        ),
        (
            "_dns._udp.service.consul.",
            "SRV",
            Kind.ANSWER,
            ["_dns._udp.service.consul. 5 IN SRV 0 1 8080 d1.dns.service.consul."],
        ),
        (
            "primary.web.service.dc1.consul.",
            "A",
            Kind.ANSWER,
            ["primary.web.service.dc1.consul. 5 IN A 10.0.0.5"],
        ),
        (
            "service.dc1.consul.",
            "NS",
            Kind.ANSWER,
            ["service.dc1.consul. 3600 IN NS ns.service.dc1.consul."],
        ),
        ("service.consul.", "SOA", Kind.ANSWER, [SOA]),
        ("service.consul.", "NS", Kind.ANSWER, ["service.consul. 3600 IN NS ns.service.consul."]),
    ],
)
def test_consul_names(name: str, qtype: str, kind: Kind, records: list[str]) -> None:
    got_kind, got, _ = ask(name, qtype)
    assert got_kind is kind
    assert got == _norm(records)


@pytest.mark.parametrize(
    "name", ["nope.service.consul.", "_web._nope.service.consul.", "blue.web.service.consul."]
)
def test_unknown_consul_names_are_nxdomain_with_the_alt_soa(name: str) -> None:
    kind, answer_, authority = ask(name, "A")
    assert (kind, answer_) == (Kind.NXDOMAIN, [])
    assert authority == _norm([SOA])


def test_the_primary_origin_is_unchanged_and_alt_is_off_by_default() -> None:
    kind, records, _ = ask("_web._primary.service.local.", "SRV")
    assert kind is Kind.NXDOMAIN  # the tag form is Consul's, not the native zone's
    kind, records, _ = ask("web.service.local.", "A")
    assert records == _norm(
        ["web.service.local. 5 IN A 10.0.0.5", "web.service.local. 5 IN A 10.0.0.6"]
    )
    assert ask("web.service.consul.", "A", Settings(origin=ORIGIN))[0] is Kind.REFUSED


def test_alt_domain_setting() -> None:
    assert load_config({}, env={}).alt_domain is None
    assert load_config({}, env={"DNSREG_ALT_DOMAIN": "Consul."}).alt_domain == "consul"
    assert load_config({"alt_domain": "off"}, env={}).alt_domain is None
    with pytest.raises(ConfigError, match="alt_domain"):
        load_config({"alt_domain": "con_sul"}, env={})


@pytest.mark.parametrize(
    "name", ["consul.", "node1.node.consul.", "web.service.dc2.consul.", "web.query.consul."]
)
def test_other_consul_names_are_refused(name: str) -> None:
    assert ask(name, "A")[0] is Kind.REFUSED
