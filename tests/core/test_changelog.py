"""The change ring behind /v1/events and blocking queries, driven by a pure registry."""

from __future__ import annotations

import ipaddress
import random

import pytest

from dnsreg.core.changelog import (
    MAX_WAIT,
    ChangeLog,
    blocking_timeout,
    encode_change,
    parse_index,
    parse_wait,
)
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Registration
from dnsreg.core.registry import Change, Registry
from tests.helpers import FakeClock


def reg(service: str, instance: str, ttl: float = 10.0) -> Registration:
    return Registration(service, instance, ipaddress.ip_address("10.0.0.1"), 80, ttl=ttl)


def feed(log: ChangeLog, changes: list[Change]) -> None:
    for change in changes:
        log.append(encode_change(change))


def test_after_returns_events_past_the_cursor_filtered_by_prefix(clock: FakeClock) -> None:
    registry = Registry()
    log = ChangeLog(100, floor=registry.revision)
    feed(log, [registry.register(reg(s, "a"), clock()) for s in ("web", "db", "webapi", "web")])
    batch = log.after(0, "web")
    assert [(e.revision, e.service) for e in batch.events] == [
        (1, "web"),
        (3, "webapi"),
        (4, "web"),
    ]
    assert batch.cursor == 4
    assert not batch.reset
    assert [e.revision for e in log.after(3).events] == [4]
    assert log.after(4).events == []


def test_cursor_older_than_the_ring_or_from_the_future_resets(clock: FakeClock) -> None:
    registry = Registry()
    log = ChangeLog(3, floor=registry.revision)
    feed(log, [registry.register(reg("web", f"i{n}"), clock()) for n in range(5)])
    assert (log.floor, log.head, len(log)) == (2, 5, 3)
    assert log.after(1).reset
    assert [e.revision for e in log.after(2).events] == [3, 4, 5]
    assert log.after(6).reset
    assert log.after(1).cursor == 5


def test_log_started_after_a_restart_cannot_serve_older_cursors() -> None:
    log = ChangeLog(10, floor=40)  # the store came back at revision 40
    assert log.after(39).reset
    assert not log.after(40).reset


def test_eviction_compacts_and_keeps_order(clock: FakeClock) -> None:
    registry = Registry()
    log = ChangeLog(4, floor=0)
    feed(log, [registry.register(reg("web", f"i{n}"), clock()) for n in range(50)])
    assert [e.revision for e in log.after(log.floor).events] == [47, 48, 49, 50]
    assert len(log) == 4


def test_stale_or_repeated_revision_is_ignored(clock: FakeClock) -> None:
    registry = Registry()
    log = ChangeLog(10)
    change = registry.register(reg("web", "a"), clock())
    assert log.append(encode_change(change))
    assert not log.append(encode_change(change))
    assert len(log) == 1


def test_moved_since_by_service_and_prefix(clock: FakeClock) -> None:
    registry = Registry()
    log = ChangeLog(10)
    feed(
        log,
        [registry.register(reg("web", "a"), clock()), registry.register(reg("db", "a"), clock())],
    )
    assert log.moved_since(0, service="web")
    assert not log.moved_since(1, service="web")
    assert log.moved_since(1, service="db")
    assert not log.moved_since(1, prefix="we")
    assert log.moved_since(1, prefix="")
    assert not log.moved_since(2)
    assert log.moved_since(3)  # from the future: answer at once


def test_heartbeat_is_not_a_change(clock: FakeClock) -> None:
    registry = Registry()
    log = ChangeLog(10)
    feed(log, [registry.register(reg("web", "a"), clock())])
    registry.heartbeat("web", "a", clock())
    assert registry.revision == 1
    assert not log.moved_since(1)


@pytest.mark.parametrize("wait", [0.0, 1.0, 30.0, 300.0, 590.0, 600.0, 5000.0])
def test_blocking_timeout_jitters_within_a_sixteenth_and_never_past_the_cap(wait: float) -> None:
    rng = random.Random(7)
    capped = min(wait, MAX_WAIT)
    values = [blocking_timeout(wait, rng) for _ in range(500)]
    assert all(v <= MAX_WAIT for v in values)
    assert all(abs(v - capped) <= capped / 16 + 1e-9 for v in values)
    if capped > 0:
        assert len({round(v, 6) for v in values}) > 400  # spread, not lockstep


def test_parse_wait_and_index() -> None:
    assert parse_wait("30s") == 30.0
    assert parse_wait("500ms") == 0.5
    assert parse_wait("1h") == MAX_WAIT
    assert parse_wait(None) == 300.0
    assert parse_index("41") == 41
    with pytest.raises(InvalidInput) as err:
        parse_index("-1")
    assert err.value.field == "index"
    with pytest.raises(InvalidInput):
        parse_wait("soon")
