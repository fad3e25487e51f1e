"""The health decisions as pure functions, driven by a fake clock: thresholds, deregister_after,
schedule spreading, panic and self-preservation, with their edges."""

from __future__ import annotations

import ipaddress

import pytest

from dnsreg.core.model import Check, CheckStatus, Health, Registration
from dnsreg.core.registry import Registry, ServedSet
from dnsreg.health.rules import (
    MAX_OUTPUT,
    ProbeResult,
    apply_result,
    deregister_at,
    first_run,
    following_run,
    http_verdict,
    next_run,
    spread_offset,
    truncate,
)
from tests.helpers import FakeClock

P, W, C = Health.PASSING, Health.WARNING, Health.CRITICAL


def http(**kw: object) -> Check:
    return Check(kind="http", target="http://127.0.0.1:1/health", **kw)  # type: ignore[arg-type]


def run(
    check: Check, clock: FakeClock, results: list[Health], status: CheckStatus | None = None
) -> list[CheckStatus]:
    """Feed one result per interval; return the status after each."""
    status = status or CheckStatus()
    out = []
    for health in results:
        status = apply_result(check, status, ProbeResult(health, health.value, clock(), 0.01))
        out.append(status)
        clock.advance(check.interval)
    return out


# ------------------------------------------------------------------ rise / fall
def test_a_check_starts_critical_and_not_run() -> None:
    status = CheckStatus()
    assert status.state is C
    assert status.pending
    assert status.output == "not run yet"
    assert status.last_result is None


def test_defaults_first_pass_serves_two_failures_withdraw(clock: FakeClock) -> None:
    check = http()  # rise 1, fall 2
    states = [s.state for s in run(check, clock, [P, C, C, P])]
    assert states == [P, P, C, P]


def test_fall_exactly_at_threshold(clock: FakeClock) -> None:
    check = http(fall=3)
    after = run(check, clock, [P, C, C, C])
    assert [s.state for s in after] == [P, P, P, C]  # fall-1 failures keep it served
    assert [s.consecutive for s in after] == [1, 1, 2, 3]
    assert [s.last_result for s in after] == [P, C, C, C]


def test_rise_applies_from_the_start_and_after_a_failure(clock: FakeClock) -> None:
    check = http(rise=2, fall=1)
    after = run(check, clock, [P, P, C, P, P])
    assert [s.state for s in after] == [C, P, C, C, P]


def test_an_interrupted_streak_starts_over(clock: FakeClock) -> None:
    check = http(fall=2)
    after = run(check, clock, [P, C, P, C, P, C, C])
    assert [s.state for s in after] == [P, P, P, P, P, P, C]


def test_429_is_warning_and_stays_served(clock: FakeClock) -> None:
    check = http(rise=1, fall=1)
    after = run(check, clock, [W, P, W, W, C])
    assert [s.state for s in after] == [W, P, W, W, C]
    assert all(s.state.served for s in after[:4])
    # Warning and passing are on the same (ok) side: the streak continues across them.
    assert [s.consecutive for s in after] == [1, 2, 3, 4, 1]


def test_warning_counts_towards_rise(clock: FakeClock) -> None:
    check = http(rise=2)
    after = run(check, clock, [C, W, P])
    assert [s.state for s in after] == [C, C, P]


def test_critical_since_starts_at_the_turn_and_clears_on_recovery(clock: FakeClock) -> None:
    check = http(fall=2)
    start = clock()
    after = run(check, clock, [P, C, C, C, P])
    assert [s.critical_since for s in after] == [
        None,
        None,
        start + 2 * check.interval,  # the result that turned it critical
        start + 2 * check.interval,  # staying critical keeps the start
        None,
    ]


def test_never_passing_is_critical_since_its_first_result(clock: FakeClock) -> None:
    check = http()
    start = clock()
    after = run(check, clock, [C, C])
    assert [s.critical_since for s in after] == [start, start]


def test_result_carries_run_time_duration_and_output(clock: FakeClock) -> None:
    result = ProbeResult(C, "x" * 5000, clock(), 0.25)
    status = apply_result(http(), CheckStatus(), result)
    assert status.last_run == clock()
    assert status.last_duration == 0.25
    assert len(status.output) == MAX_OUTPUT
    assert status.output.endswith("(truncated)")
    assert not status.pending
    assert truncate("  short  ") == "short"


@pytest.mark.parametrize(
    ("code", "health"),
    [(199, C), (200, P), (204, P), (299, P), (301, C), (404, C), (428, C), (429, W), (500, C)],
)
def test_http_status_verdicts(code: int, health: Health) -> None:
    assert http_verdict(code) is health


# ----------------------------------------------------------------- deregister_after
def test_deregister_after_counts_from_the_turn_to_critical(clock: FakeClock) -> None:
    check = http(fall=1, deregister_after=300.0)
    passing, failed, still = run(check, clock, [P, C, C])
    assert deregister_at(check, passing) is None
    assert failed.critical_since is not None
    assert deregister_at(check, failed) == failed.critical_since + 300.0
    assert deregister_at(check, still) == failed.critical_since + 300.0


def test_deregister_after_needs_a_result_and_a_setting(clock: FakeClock) -> None:
    assert deregister_at(http(deregister_after=1.0), CheckStatus()) is None  # not run yet
    (failed,) = run(http(fall=1), clock, [C])
    assert deregister_at(http(fall=1), failed) is None  # off by default


def test_recovery_cancels_deregistration(clock: FakeClock) -> None:
    check = http(fall=1, deregister_after=25.0)
    *_, recovered = run(check, clock, [C, C, P])
    assert deregister_at(check, recovered) is None


# ----------------------------------------------------------------------- schedule
def test_spread_offset_is_deterministic_and_within_the_interval() -> None:
    assert spread_offset("web/web-1/0", 10.0) == spread_offset("web/web-1/0", 10.0)
    assert spread_offset("web/web-1/0", 10.0) != spread_offset("web/web-1/1", 10.0)
    offsets = [spread_offset(f"svc/i{n}/0", 10.0) for n in range(10_000)]
    assert all(0.0 <= o < 10.0 for o in offsets)
    buckets = [0] * 10
    for o in offsets:
        buckets[int(o)] += 1
    # No thundering herd: each tenth of the interval gets about a tenth of the checks.
    assert all(850 < b < 1150 for b in buckets), buckets
    # Phases share a 20 ms tick (so checks due together wake the loop once).
    assert all(abs(o / 0.02 - round(o / 0.02)) < 1e-6 for o in offsets)
    assert len(set(offsets)) == 500
    short = {spread_offset(f"svc/i{n}/0", 0.1) for n in range(1000)}
    assert len(short) == 10  # a short interval still gets ten phases
    assert all(0.0 <= o < 0.1 for o in short)


def test_next_run_is_the_next_grid_point(clock: FakeClock) -> None:
    interval, offset = 10.0, 3.0
    now = clock()
    at = next_run(now, interval, offset)
    assert now < at <= now + interval
    assert (at - offset) % interval == pytest.approx(0.0, abs=1e-6)
    # Exactly on a grid point: the next one, a full interval later.
    assert next_run(at, interval, offset) == pytest.approx(at + interval)
    # A run that took most of the interval is still followed on time.
    assert next_run(at + 9.99, interval, offset) == pytest.approx(at + interval)


def test_following_run_never_repeats_a_slot_on_a_lagging_clock(clock: FakeClock) -> None:
    interval, offset = 10.0, 3.0
    at = next_run(clock(), interval, offset)
    # The loop's clock reads a hair before the slot that just ran (a cached clock).
    assert following_run(at, at - 0.0005, interval, offset) == pytest.approx(at + interval)
    assert following_run(at, at + 0.2, interval, offset) == pytest.approx(at + interval)
    # A run that overran a whole slot skips to the next one after now.
    assert following_run(at, at + 12.0, interval, offset) == pytest.approx(at + 2 * interval)
    # After a fresh first run (off the grid), the next run is the next grid point.
    fresh = clock()
    assert following_run(fresh, fresh + 0.01, interval, offset) == next_run(
        fresh + 0.01, interval, offset
    )


def test_first_run_at_once_when_fresh_else_on_the_grid(clock: FakeClock) -> None:
    now = clock()
    assert first_run(now, 10.0, 4.0, fresh=True) == now
    resumed = first_run(now, 10.0, 4.0, fresh=False)
    assert resumed == next_run(now, 10.0, 4.0)


def test_a_failure_is_probed_within_one_interval_of_starting(clock: FakeClock) -> None:
    # Whatever the phase, the grid never leaves a gap longer than the interval.
    interval = 10.0
    for n in range(200):
        offset = spread_offset(f"x/{n}/0", interval)
        fails_at = clock() + n * 0.137
        assert next_run(fails_at, interval, offset) - fails_at <= interval


# -------------------------------------------------------------------------- panic
def _reg(iid: str, checks: tuple[Check, ...] = ()) -> Registration:
    return Registration(
        service="pay", id=iid, address=ipaddress.ip_address("10.0.0.1"), port=80, checks=checks
    )


def _judged(state: Health) -> CheckStatus:
    return CheckStatus(state=state, last_run=1.0, last_result=state)


def _panic_registry(threshold: float, healthy: int, failing: int) -> Registry:
    r = Registry(panic_threshold=threshold)
    for n in range(healthy + failing):
        r.register(_reg(f"i{n}", (http(),)), 0)
        r.set_check_status("pay", f"i{n}", 0, _judged(P if n < healthy else C))
    return r


def test_panic_below_the_threshold_serves_every_live_instance() -> None:
    r = _panic_registry(0.5, healthy=1, failing=3)
    served = r.served("pay")
    assert served.panic
    assert len(served.instances) == 4


def test_panic_threshold_edge_exactly_at_it_is_no_panic() -> None:
    r = _panic_registry(0.5, healthy=2, failing=2)  # 50 % is not below 50 %
    served = r.served("pay")
    assert not served.panic
    assert len(served.instances) == 2


def test_panic_off_serves_only_the_healthy() -> None:
    r = _panic_registry(0.5, healthy=0, failing=3)
    r.panic_threshold = None
    assert r.served("pay").instances == ()


def test_panic_ignores_instances_not_checked_yet_and_in_maintenance() -> None:
    r = Registry(panic_threshold=0.5)
    r.register(_reg("new", (http(),)), 0)  # not run yet
    # A brand-new service is not "in panic": its instance is served once it passes.
    assert r.served("pay") == ServedSet((), False)
    r.register(_reg("ok"), 0)
    r.register(_reg("down", (http(),)), 0)
    r.set_check_status("pay", "down", 0, _judged(C))
    r.register(_reg("maint"), 0)
    r.set_maintenance("pay", "maint", "deploy")
    served = r.served("pay")
    assert not served.panic  # 1 of 2 judged instances served: 50 %
    r.set_maintenance("pay", "ok", "deploy")
    served = r.served("pay")
    assert served.panic  # 0 of 1 judged
    # Panic serves the failing one, but neither the unchecked nor those in maintenance.
    assert [i.reg.id for i in served.instances] == ["down"]


def test_registry_first_due_skips_renewed_leases(clock: FakeClock) -> None:
    r = Registry()
    r.register(_reg("a"), clock())
    r.register(
        Registration(
            service="pay", id="b", address=ipaddress.ip_address("10.0.0.2"), port=80, ttl=60
        ),
        clock(),
    )
    clock.advance(20)
    r.heartbeat("pay", "a", clock())
    clock.advance(15)  # a's first deadline (30 s) has passed, but it was renewed
    assert r.first_due(clock()) is None
    clock.advance(15)  # 50 s: a is due (renewed at 20 s + 30 s)
    due = r.first_due(clock())
    assert due is not None
    assert due.reg.id == "a"
    assert r.get("pay", "a") is not None  # nothing removed
    assert sorted(ttl for _, ttl in r.leases()) == [30.0, 60.0]
