"""Consul request bodies: case-insensitive names, unknown fields named, Consul's defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dnsreg.core.errors import InvalidInput
from dnsreg.http.consul_schema import ConsulCheckUpdate, ConsulService, decode, duration
from dnsreg.http.consul_schema import to_registration as consul_registration


def register(body: dict[str, Any], caller: str = "10.9.9.9") -> Any:
    return consul_registration(decode(json.dumps(body).encode(), ConsulService), caller)


def test_field_names_ignore_case_and_snake_case_but_meta_keys_keep_theirs() -> None:
    docs = register({
        "Name": "web", "ID": "web-1", "Tags": ["Primary"], "Address": "10.0.0.5", "Port": 80,
        "Meta": {"Version": "2", "version": "3"}, "Weights": {"Passing": 5, "Warning": 1},
        "Check": {"HTTP": "http://10.0.0.5/health", "Interval": "10s",
                  "DeregisterCriticalServiceAfter": "1m30s"},
    })  # fmt: skip
    py_consul = register({
        "name": "web", "id": "web-1", "tags": ["Primary"], "address": "10.0.0.5", "port": 80,
        "meta": {"Version": "2", "version": "3"}, "weights": {"passing": 5, "warning": 1},
        "checks": [{"http": "http://10.0.0.5/health", "interval": "10s",
                    "deregister_critical_service_after": "1m30s"}],
    })  # fmt: skip
    assert docs == py_consul
    assert docs.tags == ("primary",)
    assert dict(docs.meta) == {"Version": "2", "version": "3"}
    assert docs.weight == 5
    assert docs.ttl == 0  # no lease
    (check,) = docs.checks
    assert check.kind == "http"
    assert check.deregister_after == 90
    assert check.timeout == 10  # Consul's default 10s, capped at the interval
    assert check.id == "service:web-1"


def test_defaults_id_is_name_address_is_caller_check_ids_numbered() -> None:
    reg = register({"Name": "api", "Port": 81, "Checks": [{"TTL": "15s"}, {"TCP": "10.0.0.1:81",
                    "Interval": "1500ms", "Timeout": "2s"}]})  # fmt: skip
    assert reg.id == "api"
    assert str(reg.address) == "10.9.9.9"
    ttl, tcp = reg.checks
    assert (ttl.kind, ttl.interval, ttl.target, ttl.id) == ("ttl", 15.0, "15s", "service:api:1")
    assert (tcp.kind, tcp.interval, tcp.timeout, tcp.id) == ("tcp", 1.5, 1.5, "service:api:2")
    assert ttl.name == "Service 'api' check"


def test_rise_and_fall_from_success_before_passing_and_failures_before_critical() -> None:
    reg = register({"Name": "api", "Port": 81, "Check": {"TTL": "5s", "SuccessBeforePassing": 3,
                    "FailuresBeforeCritical": 2, "CheckID": "beat", "Name": "Beat"}})  # fmt: skip
    (check,) = reg.checks
    assert (check.rise, check.fall, check.id, check.name) == (3, 2, "beat", "Beat")
    zero = register({"Name": "api", "Port": 81, "Check": {"TTL": "5s"}}).checks[0]
    assert (zero.rise, zero.fall) == (1, 1)  # Consul's 0: change at the first result


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"Name": "a", "Port": 1, "Kind": "connect-proxy", "Proxy": {}},
            "unknown or unsupported field(s): Kind, Proxy",
        ),
        (
            {"Name": "a", "Port": 1, "checks": [{"TTL": "5s"}, {"TTL": "5s", "grpc": "x"}]},
            "unknown or unsupported field(s): Checks[1].grpc",
        ),
        ({"Name": "a", "name": "b", "Port": 1}, "name: given twice"),
        (
            {"Name": "a", "Port": 1, "Check": {"TTL": "5s", "HTTP": "http://x/"}},
            "Check: give exactly one of HTTP, TCP or TTL",
        ),
        (
            {"Name": "a", "Port": 1, "Check": {"TTL": "5s", "Interval": "1s"}},
            "Check: a TTL check has no Interval",
        ),
        ({"Name": "a", "Port": 1, "Check": {"TTL": "100ms"}}, "Check.TTL: at least 1s"),
        (
            {"Name": "a", "Port": 1, "Check": {"HTTP": "ftp://x/", "Interval": "1s"}},
            "Check.http: must be an http:// or https:// URL",
        ),
        (
            {
                "Name": "a",
                "Port": 1,
                "Checks": [{"TTL": "5s", "CheckID": "c"}, {"TTL": "5s", "CheckID": "c"}],
            },
            "Checks[1].CheckID: 'c' is given twice",
        ),
        (
            {"Name": "a", "Port": 1, "Check": {"TTL": "5s", "SuccessBeforePassing": 101}},
            "Check.SuccessBeforePassing: must be between 0 and 100",
        ),
        ({"Name": "a", "Port": 70000}, "port: must be between 1 and 65535"),
        ({"Name": "a", "Port": 1, "Address": "web.example"}, "is not an IPv4 or IPv6 address"),
        ({"Name": "a", "ID": "a:1", "Port": 1}, "ID: 'a:1' is not a DNS label"),
        ({"Port": 1}, "Object missing required field `Name`"),
        (
            {"Name": "a", "Port": 1, "checks": [{"TTL": "5s", "success_before_passing": "2"}]},
            "Expected `int`, got `str` - at `$.Checks[0].SuccessBeforePassing`",
        ),
        (
            {"Name": "a", "Port": 1, "Check": {"TTL": 5, "DeregisterCriticalServiceAfter": "1d"}},
            "Check.DeregisterCriticalServiceAfter",
        ),
    ],
)
def test_bad_bodies_name_what_is_wrong(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        register(body)
    assert message in caught.value.message


@pytest.mark.parametrize("raw", [b"", b"[1]", b"{", b'"web"'])
def test_not_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="Request decode failed"):
        decode(raw, ConsulService)


def test_check_update_body() -> None:
    update = decode(b'{"status": "warning", "OUTPUT": "slow"}', ConsulCheckUpdate)
    assert (update.status, update.output) == ("warning", "slow")
    with pytest.raises(InvalidInput, match="Status"):
        decode(b'{"Status": "broken"}', ConsulCheckUpdate)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("2.5s", 2.5), (3, 3.0)],
)
def test_go_durations(text: str | float, seconds: float) -> None:
    assert duration(text, "Interval") == pytest.approx(seconds)
