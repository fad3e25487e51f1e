"""The registrar's TOML service files, parsed and merged without any I/O."""

from __future__ import annotations

import pytest

from dnsreg.client.registration import InstanceSpec
from dnsreg.client.service_files import diff, parse_service_file, plan
from dnsreg.core.errors import InvalidInput

FULL = """
[[instance]]
service = "db"
address = "10.0.0.7"
port = 5432
tags = ["primary"]
meta = { version = "16" }
ttl = "15s"
weight = 5

[[instance.check]]
tcp = "10.0.0.7:5432"
interval = "5s"

[[instance]]
service = "db"
id = "db-replica"
address = "10.0.0.8"
port = 5432
"""


def test_instances_with_checks_and_defaults() -> None:
    primary, replica = parse_service_file("db.toml", FULL, hostname="reg.example")
    assert primary.key == ("db", "10-0-0-7-5432")  # id defaults to where it lives
    assert primary.body() == {
        "port": 5432,
        "address": "10.0.0.7",
        "weight": 5,
        "ttl": "15s",
        "tags": ["primary"],
        "meta": {"version": "16"},
        "checks": [{"tcp": "10.0.0.7:5432", "interval": "5s"}],
    }
    assert replica.key == ("db", "db-replica")


def test_single_instance_at_top_level() -> None:
    text = 'service = "cache"\nport = 6379\n[[check]]\nhttp = "http://127.0.0.1:6379/"\n'
    (spec,) = parse_service_file("cache.toml", text, hostname="box")
    assert spec.key == ("cache", "box-6379")  # no address: this host's name
    assert spec.checks == ({"http": "http://127.0.0.1:6379/"},)


def test_empty_file_describes_nothing() -> None:
    assert parse_service_file("empty.toml", "", hostname="h") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("service = ", "not valid TOML"),
        ('service = "web"', "`port` is missing"),
        ('service = "web"\nport = "80"', "`port` has the wrong type"),
        ('service = "web"\nport = 80\ncolour = "red"', "unknown key(s) colour"),
        ('service = "web_1"\nport = 80', "not a DNS label"),
        ('service = "web"\nport = 80\nmeta = { v = 2 }', "`meta` must be a table of strings"),
        ('service = "web"\nport = 80\n[[check]]\nhttp = "x"\ntcp = "y"', "exactly one of"),
        ('service = "web"\nport = 80\n[[check]]\nhttps = "x"', "unknown key(s) https"),
        ('[[instance]]\nservice = "a"\nport = 1\n[[instance]]\nservice = "a"\nport = 1', "twice"),
        ('service = ["web"]\nport = 1', "`service` has the wrong type"),
        ("[[services]]\nport = 1", "unknown key(s) services"),
    ],
)
def test_bad_files_are_refused_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_service_file("web.toml", text, hostname="h")
    assert err.value.message.startswith("web.toml")
    assert message in err.value.message


def spec(service: str, instance: str, port: int = 80) -> InstanceSpec:
    return InstanceSpec(service, instance, port)


def test_plan_keeps_the_first_claim_and_reports_the_second() -> None:
    merged = plan({"b.toml": [spec("web", "a", 81)], "a.toml": [spec("web", "a"), spec("db", "x")]})
    assert merged.desired == {("web", "a"): spec("web", "a"), ("db", "x"): spec("db", "x")}
    assert merged.origin[("web", "a")] == "a.toml"
    assert "b.toml: web/a is already described in a.toml" in merged.duplicates["b.toml"]


def test_diff_adds_changes_and_removes() -> None:
    current = {("web", "a"): spec("web", "a"), ("web", "b"): spec("web", "b")}
    desired = {("web", "a"): spec("web", "a", 81), ("web", "c"): spec("web", "c")}
    add, change, remove = diff(current, desired)
    assert add == [spec("web", "c")]
    assert change == [spec("web", "a", 81)]
    assert remove == [("web", "b")]
    assert diff(desired, desired) == ([], [], [])
