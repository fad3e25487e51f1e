"""The registry with a fake clock: leases, revisions, conflicts, indexes."""

from __future__ import annotations

import ipaddress

import pytest

from dnsreg.core.errors import Conflict, NotFound
from dnsreg.core.model import Registration
from dnsreg.core.registry import ChangeKind, Registry
from dnsreg.core.write_log import TOUCH_LOG
from tests.helpers import FakeClock


def reg(service: str = "web", iid: str = "web-1", **kw: object) -> Registration:
    kw.setdefault("address", ipaddress.ip_address("10.0.0.5"))
    return Registration(service=service, id=iid, port=8080, **kw)  # type: ignore[arg-type]


def test_every_change_bumps_one_revision(clock: FakeClock) -> None:
    r = Registry()
    assert r.register(reg(ttl=10), clock()).revision == 1
    assert r.register(reg(ttl=10), clock()).kind is ChangeKind.REPLACED
    assert r.revision == 2
    r.heartbeat("web", "web-1", clock())
    assert r.revision == 2  # a heartbeat changes nothing anyone sees
    assert r.set_maintenance("web", "web-1", "deploy") is not None
    assert r.set_maintenance("web", "web-1", "deploy") is None  # no-op is not a change
    assert r.deregister("web", "web-1").revision == 4
    assert r.service_revision("web") == 4


def test_lease_expires_exactly_at_deadline(clock: FakeClock) -> None:
    r = Registry()
    r.register(reg(ttl=10), clock())
    clock.advance(9.999)
    assert r.expire_due(clock()) == []
    clock.advance(0.001)
    (change,) = r.expire_due(clock())
    assert change.kind is ChangeKind.EXPIRED
    assert r.get("web", "web-1") is None
    assert not r.has_service("web")


def test_heartbeat_moves_the_deadline(clock: FakeClock) -> None:
    r = Registry()
    r.register(reg(ttl=10), clock())
    clock.advance(8)
    r.heartbeat("web", "web-1", clock())
    clock.advance(8)
    assert r.expire_due(clock()) == []  # 16 s after registering, 8 s after the heartbeat
    assert r.next_deadline() is not None
    clock.advance(2)
    assert [c.kind for c in r.expire_due(clock())] == [ChangeKind.EXPIRED]


def test_zero_ttl_never_expires(clock: FakeClock) -> None:
    r = Registry()
    r.register(reg(ttl=0), clock())
    clock.advance(10**6)
    assert r.expire_due(clock()) == []
    assert r.get("web", "web-1") is not None


def test_reregistering_renews_the_lease(clock: FakeClock) -> None:
    r = Registry()
    r.register(reg(ttl=10), clock())
    clock.advance(9)
    r.register(reg(ttl=10), clock())
    clock.advance(9)
    assert r.expire_due(clock()) == []


def test_heartbeat_of_unknown_instance_is_not_found(clock: FakeClock) -> None:
    with pytest.raises(NotFound):
        Registry().heartbeat("web", "ghost", clock())


def test_id_equal_to_a_tag_is_refused_both_ways(clock: FakeClock) -> None:
    r = Registry()
    r.register(reg(iid="web-1", tags=("canary",)), clock())
    with pytest.raises(Conflict):
        r.register(reg(iid="canary"), clock())
    with pytest.raises(Conflict):
        r.register(reg(iid="web-2", tags=("web-1",)), clock())
    with pytest.raises(Conflict):
        r.register(reg(iid="self", tags=("self",)), clock())
    assert r.revision == 1  # refused registrations change nothing


def test_reserved_and_static_names_are_refused(clock: FakeClock) -> None:
    r = Registry(static_clash=lambda svc: "docs.service.local." if svc == "docs" else None)
    with pytest.raises(Conflict):
        r.register(reg(service="ns"), clock())
    with pytest.raises(Conflict, match=r"docs\.service\.local"):
        r.register(reg(service="docs"), clock())


def test_tag_index_follows_replacements(clock: FakeClock) -> None:
    r = Registry()
    r.register(reg(iid="a", tags=("x", "y")), clock())
    r.register(reg(iid="b", tags=("x",)), clock())
    assert [i.reg.id for i in r.tagged("web", ["x"])] == ["a", "b"]
    assert [i.reg.id for i in r.tagged("web", ["x", "y"])] == ["a"]
    r.register(reg(iid="a", tags=("z",)), clock())
    assert [i.reg.id for i in r.tagged("web", ["x"])] == ["b"]
    assert r.tagged("web", ["y"]) == []
    r.deregister("web", "b")
    assert not r.has_tag("web", "x")


def test_restore_gives_a_fresh_full_lease(clock: FakeClock) -> None:
    r = Registry()
    inst = r.register(reg(ttl=30), clock()).after
    assert inst is not None
    clock.advance(1000)  # the server was down for a long time
    fresh = Registry()
    fresh.restore(inst, clock())
    fresh.set_revision(5)
    restored = fresh.require("web", "web-1")
    assert restored.deadline == clock() + 30
    assert fresh.revision == 5


# ------------------------------------------------------------------ staged writes
def _state(r: Registry) -> tuple[object, ...]:
    return (
        r.revision,
        {s: dict(r.instances(s)) for s in r.services()},
        {s: r.service_revision(s) for s in ("web", "db")},
        r.next_deadline(),
        r.tagged("web", ["blue"]),
    )


def test_unstage_takes_back_every_staged_change_invisibly() -> None:
    clock = FakeClock()
    r = Registry()
    r.register(reg(iid="web-1", tags=("blue",), ttl=10), clock())
    r.register(reg(service="db", iid="db-1", ttl=5), clock())
    before = _state(r)
    clock.advance(6)  # db-1 is due
    r.stage()
    changes = [
        r.register(reg(iid="web-2", tags=("blue",)), clock()),
        r.deregister("web", "web-1"),
        *r.expire_due(clock()),
    ]
    assert [c.kind for c in changes] == [
        ChangeKind.REGISTERED, ChangeKind.DEREGISTERED, ChangeKind.EXPIRED,
    ]  # fmt: skip
    r.unstage(changes)
    assert _state(r) == before  # no revision burnt, nothing moved
    # The lease that expiry popped is still tracked: it expires when committed for real.
    assert [c.id for c in r.expire_due(clock())] == ["db-1"]


def test_redo_applies_committed_changes_and_keeps_a_newer_lease() -> None:
    clock = FakeClock()
    r = Registry()
    r.register(reg(iid="web-1", ttl=10), clock())
    r.stage()
    change = r.set_maintenance("web", "web-1", "deploy")
    assert change is not None
    r.unstage([change])
    clock.advance(5)
    r.heartbeat("web", "web-1", clock())  # while the commit ran
    r.redo(change)
    now = r.require("web", "web-1")
    assert now.maintenance == "deploy"
    assert now.deadline == clock() + 10  # the heartbeat's lease, not the staged one
    assert r.revision == change.revision == r.service_revision("web")


def test_touched_since_names_the_instances_written_and_knows_when_it_cannot() -> None:
    registry = Registry()
    address = ipaddress.IPv4Address("10.0.0.1")
    assert registry.touched_since("web", 0) == set()
    registry.register(Registration("web", "a", address, 80, ttl=0), now=0.0)
    registry.register(Registration("web", "b", address, 80, ttl=0), now=0.0)
    mark = registry.epoch("web")
    registry.register(Registration("web", "c", address, 80, ttl=0), now=0.0)
    registry.deregister("web", "a")
    registry.set_maintenance("web", "b", "drain")
    registry.register(Registration("db", "x", address, 80, ttl=0), now=0.0)
    assert registry.touched_since("web", mark) == {"a", "b", "c"}
    assert registry.touched_since("web", registry.epoch("web")) == set()
    registry.heartbeat("web", "b", now=1.0)  # nothing DNS shows moved
    assert registry.touched_since("web", registry.epoch("web")) == set()
    # A write staged and undone still counts: what a reader derived may have seen it.
    mark = registry.epoch("web")
    registry.stage()
    change = registry.deregister("web", "c")
    registry.unstage([change])
    assert registry.touched_since("web", mark) == {"c"}
    for n in range(TOUCH_LOG + 1):
        registry.set_maintenance("web", "b", f"r{n}")
    assert registry.touched_since("web", mark) is None, "too far behind: rebuild"
    mark = registry.epoch("web")
    registry.deregister("web", "b")
    registry.deregister("web", "c")
    registry.register(Registration("web", "d", address, 80, ttl=0), now=0.0)
    assert registry.touched_since("web", mark) is None, "the service went away meanwhile"


def _judged_verdict(r: Registry, service: str) -> bool:
    """The panic verdict the slow way: walk every instance (what the counts replace)."""
    judged = served = 0
    for i in r.instances(service).values():
        if i.maintenance is None and not i.pending:
            judged += 1
            served += i.served
    return r.panics(judged, served)


def test_panic_verdict_counts_follow_every_kind_of_write(clock: FakeClock) -> None:
    """Kept counts equal a walk of the service after 2 000 random writes of every kind,
    staged-and-undone ones included (a failed commit)."""
    import random

    from dnsreg.core.model import Check, CheckStatus, Health

    rng = random.Random(7)
    r = Registry(panic_threshold=0.5)
    check = (Check("tcp", "10.0.0.5:80"),)
    for step in range(2000):
        service = rng.choice(("a", "b"))
        iid = f"i{rng.randrange(12)}"
        existing = r.get(service, iid)
        op = rng.randrange(6)
        if op == 0 or existing is None:
            r.register(reg(service, iid, checks=check if rng.random() < 0.7 else ()), clock())
        elif op == 1:
            r.deregister(service, iid)
        elif op == 2:
            r.set_maintenance(service, iid, rng.choice((None, "deploy")))
        elif op in (3, 4) and existing.checks:
            state = rng.choice((Health.PASSING, Health.WARNING, Health.CRITICAL))
            r.set_check_status(service, iid, 0, CheckStatus(state=state, last_run=float(step)))
        else:
            r.stage()
            change = r.deregister(service, iid)
            r.unstage([change])
        for name in ("a", "b"):
            assert r.in_panic(name) == _judged_verdict(r, name), step
            assert r.served(name).panic == r.in_panic(name)
