"""Drain timing (pure): how long to wait after withdrawing an instance, on a fake clock."""

from __future__ import annotations

import ipaddress

import pytest

from dnsreg.core.drain import (
    DRAIN_REASON,
    drain_reason,
    drain_wait,
    parse_wait_override,
    start_timer,
)
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import DEFAULT_DNS_TTL, Instance, Registration
from tests.helpers import FakeClock


def instance(**fields: object) -> Instance:
    reg = Registration("web", "web-1", ipaddress.ip_address("10.0.0.5"), 8080, **fields)  # type: ignore[arg-type]
    return Instance(reg, deadline=None, registered_at=0.0, revision=1)


def test_wait_is_the_instances_dns_ttl_or_the_default() -> None:
    assert drain_wait(instance(dns_ttl=30)) == 30.0
    assert drain_wait(instance()) == float(DEFAULT_DNS_TTL)


def test_timer_counts_down_on_the_clock_it_is_given() -> None:
    clock = FakeClock(start=500.0)
    timer = start_timer(clock(), server_wait=5.0)
    assert timer.remaining(clock()) == 5.0
    assert not timer.done(clock())
    clock.advance(4.9)
    assert timer.remaining(clock()) == pytest.approx(0.1)
    assert not timer.done(clock())
    clock.advance(0.1)
    assert timer.done(clock())
    assert timer.remaining(clock()) == 0.0
    clock.advance(100)
    assert timer.remaining(clock()) == 0.0  # never negative


def test_override_replaces_the_servers_wait_and_zero_skips_it() -> None:
    clock = FakeClock()
    assert start_timer(clock(), 5.0, parse_wait_override("30s")).deadline == clock() + 30
    skip = start_timer(clock(), 5.0, parse_wait_override("0"))
    assert skip.done(clock())
    assert parse_wait_override(None) is None


@pytest.mark.parametrize("bad", ["soon", "-1", "1x"])
def test_bad_wait_is_a_clear_error(bad: str) -> None:
    with pytest.raises(InvalidInput, match="wait"):
        parse_wait_override(bad)
    with pytest.raises(InvalidInput, match="negative"):
        start_timer(0.0, 5.0, -1.0)


def test_reason_defaults_to_draining_and_is_bounded() -> None:
    assert drain_reason(None) == DRAIN_REASON == drain_reason("  ")
    assert drain_reason(" deploy 42 ") == "deploy 42"
    with pytest.raises(InvalidInput, match="reason"):
        drain_reason("x" * 201)
