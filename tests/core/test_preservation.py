"""Self-preservation (SPEC §3) on a fake clock: when expiry pauses, and when it must not."""

from __future__ import annotations

from dnsreg.core.preservation import GUARD_MIN_LAPSING, ExpiryGuard, guard_verdict, is_lapsing
from tests.helpers import FakeClock


def test_guard_threshold_edges() -> None:
    assert not guard_verdict(10, 20, 0.5).hold  # exactly half: not "more than"
    assert guard_verdict(11, 20, 0.5).hold
    assert not guard_verdict(1, 1, 0.5).hold  # one instance of one
    assert not guard_verdict(GUARD_MIN_LAPSING - 1, GUARD_MIN_LAPSING - 1, 0.5).hold
    assert guard_verdict(GUARD_MIN_LAPSING, GUARD_MIN_LAPSING, 0.5).hold
    assert not guard_verdict(9, 10_000, 0.5).hold  # a handful in a large registry
    assert not guard_verdict(400, 10_000, 0.5).hold
    assert not guard_verdict(100, 100, None).hold  # off
    assert not guard_verdict(0, 0, 0.5).hold
    assert guard_verdict(3, 4, 0.5).share == 0.75


def test_lapsing_means_overdue_or_half_the_lease_without_a_heartbeat(clock: FakeClock) -> None:
    now = clock()
    assert not is_lapsing(now + 30, 30, now)  # just renewed
    assert not is_lapsing(now + 15, 30, now)  # exactly half gone
    assert is_lapsing(now + 14.99, 30, now)
    assert is_lapsing(now, 30, now)  # due
    assert is_lapsing(now - 5, 30, now)  # overdue


class Leases:
    """Leases of ``ttl`` seconds whose holders heartbeat every ttl/3, staggered."""

    def __init__(self, clock: FakeClock, count: int, ttl: float = 30.0) -> None:
        self.clock = clock
        self.ttl = ttl
        self.deadlines = {n: clock() + ttl - (n % 10) * ttl / 30 for n in range(count)}

    def heartbeat(self, which: range | list[int] | None = None) -> None:
        for n in self.deadlines if which is None else which:
            if n in self.deadlines:
                self.deadlines[n] = self.clock() + self.ttl

    def view(self) -> list[tuple[float, float]]:
        return [(d, self.ttl) for d in self.deadlines.values()]

    def due(self) -> list[int]:
        return [n for n, d in self.deadlines.items() if d <= self.clock()]


def test_normal_heartbeats_never_trip_the_guard(clock: FakeClock) -> None:
    guard = ExpiryGuard(0.5)
    leases = Leases(clock, 100)
    for _ in range(30):
        clock.advance(leases.ttl / 3)
        leases.heartbeat()
        assert not guard.assess(clock(), leases.view()).hold


def test_partition_trips_before_the_first_lease_expires_then_heartbeats_release(
    clock: FakeClock,
) -> None:
    guard = ExpiryGuard(0.5)
    leases = Leases(clock, 100)
    # The registry stops hearing heartbeats. Advance to the first due lease.
    while not leases.due():
        clock.advance(0.5)
    verdict = guard.assess(clock(), leases.view())
    assert verdict.hold
    assert guard.active
    assert guard.since == clock()
    assert verdict.lapsing == 100
    # Heartbeats come back for most: the guard lets go; the silent rest may expire.
    leases.heartbeat(range(60))
    verdict = guard.assess(clock(), leases.view())
    assert not verdict.hold
    assert not guard.active
    assert guard.since is None


def test_one_instance_of_one_expires_normally(clock: FakeClock) -> None:
    guard = ExpiryGuard(0.5)
    leases = Leases(clock, 1)
    clock.advance(leases.ttl)
    assert leases.due() == [0]
    assert not guard.assess(clock(), leases.view()).hold


def test_small_registry_losing_everything_still_expires(clock: FakeClock) -> None:
    guard = ExpiryGuard(0.5)
    leases = Leases(clock, GUARD_MIN_LAPSING - 1)
    clock.advance(leases.ttl)
    assert not guard.assess(clock(), leases.view()).hold


def test_recent_expiries_count_for_one_lease_period(clock: FakeClock) -> None:
    guard = ExpiryGuard(0.5)
    ttl = 30.0
    # 40 of 100 leases died and expired one after another; they still count.
    for _ in range(40):
        guard.expired(clock(), ttl)
    healthy = [(clock() + ttl, ttl)] * 60
    verdict = guard.assess(clock(), healthy)
    assert (verdict.lapsing, verdict.leases, verdict.hold) == (40, 100, False)
    # 11 more stop heartbeating: 51 of 100 lapsing is more than half.
    late = [(clock() + 1, ttl)] * 11
    verdict = guard.assess(clock(), healthy[:49] + late)
    assert (verdict.lapsing, verdict.leases, verdict.hold) == (51, 100, True)
    # One lease period after the expiries, they no longer count.
    clock.advance(ttl)
    fresh = [(clock() + ttl, ttl)] * 49 + [(clock() - 1, ttl)] * 11
    verdict = guard.assess(clock(), fresh)
    assert (verdict.lapsing, verdict.leases, verdict.hold) == (11, 60, False)


def test_guard_off_never_holds(clock: FakeClock) -> None:
    guard = ExpiryGuard(None)
    leases = Leases(clock, 1000)
    clock.advance(leases.ttl * 2)
    assert not guard.assess(clock(), leases.view()).hold
    assert guard.describe()["enabled"] is False
