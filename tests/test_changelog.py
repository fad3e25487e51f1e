"""The change ring behind /v1/events and blocking queries, driven by a pure registry."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from dnsreg.changelog import (
    MAX_WAIT,
    ChangeLog,
    blocking_timeout,
    encode_change,
    parse_index,
    parse_wait,
    reset_frame,
)
from dnsreg.errors import InvalidInput
from dnsreg.model import Registration
from dnsreg.registry import Change, Registry
from dnsreg.sse import SseParser
from tests.conftest import FakeClock


def reg(service: str, instance: str, ttl: float = 10.0) -> Registration:
    return Registration(service, instance, ipaddress.ip_address("10.0.0.1"), 80, ttl=ttl)


def feed(log: ChangeLog, changes: list[Change]) -> None:
    for change in changes:
        log.append(encode_change(change))


def decode(raw: bytes) -> list[tuple[str, dict[str, object] | None, str]]:
    parser = SseParser()
    out = []
    for line in raw.decode().split("\n"):
        message = parser.feed_line(line)
        if message is not None:
            data = json.loads(message.data) if message.data is not None else None
            out.append((message.event, data, message.last_id))
    return out


def test_encoded_event_carries_revision_kind_and_new_state(clock: FakeClock) -> None:
    registry = Registry()
    change = registry.register(reg("web", "web-1"), clock())
    event = encode_change(change)
    ((kind, data, last_id),) = decode(event.frame)
    assert (kind, last_id) == ("registered", "1")
    assert data is not None
    assert data["revision"] == 1
    assert (data["service"], data["id"]) == ("web", "web-1")
    instance = data["instance"]
    assert isinstance(instance, dict)
    assert (instance["address"], instance["port"], instance["health"]) == (
        "10.0.0.1",
        80,
        "passing",
    )


def test_expiry_event_has_no_instance(clock: FakeClock) -> None:
    registry = Registry()
    registry.register(reg("web", "web-1", ttl=5), clock())
    clock.advance(5)
    (change,) = registry.expire_due(clock())
    ((kind, data, _),) = decode(encode_change(change).frame)
    assert kind == "expired"
    assert data is not None
    assert data["instance"] is None
    assert data["revision"] == 2


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


def test_reset_frame_tells_where_to_go_on() -> None:
    ((kind, data, last_id),) = decode(reset_frame(head=90, since=10, floor=50))
    assert (kind, last_id) == ("reset", "90")
    assert data == {"revision": 90, "since": 10, "oldest": 50}


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
