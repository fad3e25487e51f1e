"""Admission rules (SPEC §7), pure: which addresses and check hosts a registration may use."""

from __future__ import annotations

import ipaddress

import pytest

from dnsreg.core.admission import (
    AdmissionPolicy,
    check_address,
    check_host,
    check_host_addresses,
    check_interval,
    parse_networks,
    unusable_reason,
)
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Check

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    "text", ["0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "255.255.255.255",
             "::ffff:0.0.0.0", "::ffff:224.0.0.1"],
)  # fmt: skip
def test_unusable_addresses_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_address(ip(text), AdmissionPolicy())
    assert caught.value.field == "address"
    assert str(ip(text)) in caught.value.message


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", "10.0.0.5", "192.0.2.255", "2001:db8::1"])
def test_usable_addresses_pass(text: str) -> None:
    assert unusable_reason(ip(text)) is None
    assert check_address(ip(text), AdmissionPolicy()) == ip(text)


def test_allowed_networks_limit_the_rest() -> None:
    policy = AdmissionPolicy(allowed_networks=parse_networks(["10.0.0.0/8", "fd00::/8"]))
    assert check_address(ip("10.1.2.3"), policy)
    assert check_address(ip("fd12::1"), policy)
    for outside in ("192.168.1.1", "127.0.0.1", "2001:db8::1"):
        with pytest.raises(InvalidInput) as caught:
            check_address(ip(outside), policy)
        assert caught.value.field == "address"
        assert "10.0.0.0/8, fd00::/8" in caught.value.message
        assert caught.value.detail == {
            "field": "address", "allowed_networks": ["10.0.0.0/8", "fd00::/8"],
        }  # fmt: skip
    # Unusable stays unusable inside an allowed network.
    wide = AdmissionPolicy(allowed_networks=parse_networks(["0.0.0.0/0"]))
    with pytest.raises(InvalidInput, match="unspecified"):
        check_address(ip("0.0.0.0"), wide)


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "banana", "", 10])
def test_invalid_cidr_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="CIDR"):
        parse_networks([bad])  # type: ignore[list-item]


def test_interval_floor() -> None:
    policy = AdmissionPolicy()
    assert check_interval(1.0, policy, field="checks[0].interval") == 1.0
    with pytest.raises(InvalidInput) as caught:
        check_interval(0.1, policy, field="checks[0].interval")
    assert caught.value.field == "checks[0].interval"
    assert "at least 1s" in caught.value.message


def test_check_host_of_http_and_tcp() -> None:
    assert check_host(Check("http", "http://User:pw@Example.ORG:8080/h")) == "example.org"
    assert check_host(Check("http", "https://[::1]:8443/")) == "::1"
    assert check_host(Check("tcp", "[2001:DB8::5]:22")) == "2001:db8::5"
    assert check_host(Check("tcp", "10.0.0.5:5432")) == "10.0.0.5"


def test_a_check_must_target_the_instance_itself() -> None:
    check = Check("http", "http://127.0.0.1:5699/key")
    with pytest.raises(InvalidInput) as caught:
        check_host_addresses(check, 0, ip("10.0.0.5"), [ip("127.0.0.1")])
    assert caught.value.field == "checks[0].http"
    assert "10.0.0.5" in caught.value.message
    check_host_addresses(Check("tcp", "10.0.0.5:22"), 1, ip("10.0.0.5"), [ip("10.0.0.5")])
    # A name resolving to the instance and to someone else is refused: the
    # checker would connect to whichever comes first.
    named = Check("tcp", "web.example:80")
    with pytest.raises(InvalidInput) as caught:
        check_host_addresses(named, 2, ip("10.0.0.5"), [ip("10.0.0.5"), ip("10.0.0.9")])
    assert caught.value.field == "checks[2].tcp"
    assert "10.0.0.9" in caught.value.message
    with pytest.raises(InvalidInput, match="resolves to no address"):
        check_host_addresses(named, 0, ip("10.0.0.5"), [])
    # One machine's loopback: "localhost" may give 127.0.0.1 and ::1.
    check_host_addresses(
        Check("http", "http://localhost:80/"), 0, ip("127.0.0.1"), [ip("127.0.0.1"), ip("::1")]
    )
