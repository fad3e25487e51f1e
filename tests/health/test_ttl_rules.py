"""TTL checks as pure rules, driven by a fake clock: reports, the TTL running out, reaping."""

from __future__ import annotations

import ipaddress

from dnsreg.core.model import Check, CheckStatus, Health, Registration
from dnsreg.health.rules import deregister_at, ttl_expire, ttl_expires_at, ttl_report
from tests.helpers import FakeClock

TTL = Check(kind="ttl", target="10s", interval=10.0, timeout=10.0, rise=1, fall=1)


def test_a_new_ttl_check_is_critical_and_expires_from_its_registration(clock: FakeClock) -> None:
    registered = clock()
    status = CheckStatus()
    assert status.state is Health.CRITICAL  # Consul starts TTL checks critical too
    assert ttl_expires_at(TTL, status, registered) == registered + 10
    clock.advance(10)
    expired = ttl_expire(TTL, status, clock())
    assert expired.state is Health.CRITICAL
    assert expired.output == "TTL expired: no update for 10s"
    assert expired.critical_since == clock()
    # Once expired nothing more is due until the service reports again.
    assert ttl_expires_at(TTL, expired, registered) is None


def test_a_report_counts_the_ttl_from_now(clock: FakeClock) -> None:
    registered = clock()
    clock.advance(3)
    passing = ttl_report(TTL, CheckStatus(), Health.PASSING, "fine", clock())
    assert passing.state is Health.PASSING
    assert passing.output == "fine"
    assert ttl_expires_at(TTL, passing, registered) == clock() + 10
    clock.advance(9.9)
    again = ttl_report(TTL, passing, Health.PASSING, "still fine", clock())
    assert ttl_expires_at(TTL, again, registered) == clock() + 10
    clock.advance(10)
    expired = ttl_expire(TTL, again, clock())
    assert expired.state is Health.CRITICAL
    assert expired.output == "TTL expired: no update for 10s (last: still fine)"
    assert expired.critical_since == clock()


def test_warning_is_served_and_fail_is_critical_at_once(clock: FakeClock) -> None:
    passing = ttl_report(TTL, CheckStatus(), Health.PASSING, "", clock())
    warning = ttl_report(TTL, passing, Health.WARNING, "slow", clock())
    assert warning.state is Health.WARNING
    failed = ttl_report(TTL, warning, Health.CRITICAL, "broken", clock())
    assert failed.state is Health.CRITICAL
    assert ttl_expires_at(TTL, failed, clock()) is None


def test_success_before_passing_and_failures_before_critical_count_reports(
    clock: FakeClock,
) -> None:
    check = Check(kind="ttl", target="10s", interval=10.0, timeout=10.0, rise=2, fall=3)
    one = ttl_report(check, CheckStatus(), Health.PASSING, "", clock())
    assert one.state is Health.CRITICAL  # rise 2: one pass is not enough
    two = ttl_report(check, one, Health.PASSING, "", clock())
    assert two.state is Health.PASSING
    status = two
    for _ in range(2):
        status = ttl_report(check, status, Health.CRITICAL, "x", clock())
        assert status.state is Health.PASSING  # fall 3
    status = ttl_report(check, status, Health.CRITICAL, "x", clock())
    assert status.state is Health.CRITICAL


def test_expiry_starts_the_deregister_clock_once(clock: FakeClock) -> None:
    check = Check(kind="ttl", target="5s", interval=5.0, timeout=5.0, deregister_after=60.0)
    registered = clock()
    clock.advance(5)
    expired = ttl_expire(check, CheckStatus(), clock())
    assert deregister_at(check, expired) == registered + 5 + 60
    # A failed report while critical keeps the original critical_since.
    clock.advance(30)
    failed = ttl_report(check, expired, Health.CRITICAL, "still down", clock())
    assert deregister_at(check, failed) == registered + 5 + 60


def test_probed_checks_have_no_ttl() -> None:
    http = Check(kind="http", target="http://127.0.0.1/")
    assert ttl_expires_at(http, CheckStatus(), 0.0) is None


def test_ttl_check_round_trips_through_json() -> None:
    check = Check(kind="ttl", target="10s", interval=10.0, timeout=10.0, id="c1", name="beat")
    address = ipaddress.ip_address("10.0.0.1")
    reg = Registration(service="web", id="w", address=address, port=80, checks=(check,))
    assert Registration.from_json(reg.to_json()) == reg


def test_after_a_restart_the_ttl_counts_from_when_watching_resumed(clock: FakeClock) -> None:
    registered = clock()
    passing = ttl_report(TTL, CheckStatus(), Health.PASSING, "fine", clock())
    clock.advance(3600)  # the server was down for an hour
    resumed = clock()
    assert ttl_expires_at(TTL, passing, registered, resumed) == resumed + 10
    # A report after the restart counts from itself, as before.
    clock.advance(4)
    again = ttl_report(TTL, passing, Health.PASSING, "back", clock())
    assert ttl_expires_at(TTL, again, registered, resumed) == clock() + 10
