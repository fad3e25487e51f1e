"""Registration requests built on the client side (flags, files), before any network."""

from __future__ import annotations

import pytest

from dnsreg.client.registration import (
    InstanceSpec,
    check_flags,
    default_instance_id,
    parse_meta,
)
from dnsreg.core.errors import InvalidInput


@pytest.mark.parametrize(
    ("hostname", "port", "expected"),
    [
        ("web01.prod.example.com", 8080, "web01-8080"),
        ("My_Laptop.local", 443, "my-laptop-443"),
        ("---", 80, "host-80"),
        ("", 80, "host-80"),
        ("a" * 80, 65535, "a" * 57 + "-65535"),
    ],
)
def test_default_id_is_a_valid_stable_label(hostname: str, port: int, expected: str) -> None:
    assert default_instance_id(hostname, port) == expected
    assert len(expected) <= 63


def test_build_folds_names_and_fills_the_id() -> None:
    spec = InstanceSpec.build("Web", None, port=8080, hostname="box.lan", tags=["Blue"])
    assert spec.key == ("web", "box-8080")
    assert spec.tags == ("blue",)


def test_body_carries_only_what_was_given() -> None:
    spec = InstanceSpec.build(
        "web",
        "w1",
        port=8080,
        hostname="h",
        meta={"b": "2", "a": "1"},
        checks=check_flags(["http://127.0.0.1:8080/health"], interval="5s"),
        ttl="10s",
    )
    assert spec.body() == {
        "port": 8080,
        "ttl": "10s",
        "meta": {"a": "1", "b": "2"},
        "checks": [{"http": "http://127.0.0.1:8080/health", "interval": "5s"}],
    }
    assert InstanceSpec("web", "w1", 80).body() == {"port": 80}


def test_heartbeat_interval_is_a_third_of_the_lease() -> None:
    assert InstanceSpec("web", "w", 80, ttl="9s").heartbeat_interval == 3.0
    assert InstanceSpec("web", "w", 80).heartbeat_interval == 10.0  # server default 30 s
    assert InstanceSpec("web", "w", 80, ttl=0).heartbeat_interval == 30.0  # no lease: a check


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"service": "web_1"}, "service"),
        ({"id": "-x"}, "id"),
        ({"tags": ("ok", "no way")}, "tags[1]"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"ttl": "soon"}, "ttl"),
    ],
)
def test_bad_specs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"service": "web", "id": "w", "port": 80}
    base.update(kwargs)
    with pytest.raises(InvalidInput) as err:
        InstanceSpec(**base)  # type: ignore[arg-type]
    assert err.value.field == field


def test_meta_and_check_flags() -> None:
    assert parse_meta(["version=2", "note=a=b", "empty="]) == {
        "version": "2",
        "note": "a=b",
        "empty": "",
    }
    with pytest.raises(InvalidInput):
        parse_meta(["novalue"])
    assert check_flags([], ["127.0.0.1:5432"], timeout="1s") == [
        {"tcp": "127.0.0.1:5432", "timeout": "1s"}
    ]
