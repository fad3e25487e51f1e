"""SSE frames of registry changes, as /v1/events sends them, read back by the client's parser."""

from __future__ import annotations

import ipaddress
import json

from dnsreg.client.sse import SseParser
from dnsreg.core.changelog import encode_change
from dnsreg.core.model import Registration
from dnsreg.core.registry import Registry
from dnsreg.http.events import event_frame, reset_frame
from tests.helpers import FakeClock


def reg(service: str, instance: str, ttl: float = 10.0) -> Registration:
    return Registration(service, instance, ipaddress.ip_address("10.0.0.1"), 80, ttl=ttl)


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
    ((kind, data, last_id),) = decode(event_frame(event))
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
    ((kind, data, _),) = decode(event_frame(encode_change(change)))
    assert kind == "expired"
    assert data is not None
    assert data["instance"] is None
    assert data["revision"] == 2


def test_reset_frame_tells_where_to_go_on() -> None:
    ((kind, data, last_id),) = decode(reset_frame(head=90, since=10, floor=50))
    assert (kind, last_id) == ("reset", "90")
    assert data == {"revision": 90, "since": 10, "oldest": 50}
