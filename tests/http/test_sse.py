"""SSE framing: what the server writes, the parser reads back (HTML §9.2)."""

from __future__ import annotations

import pytest

from dnsreg.client.sse import SseMessage, SseParser
from dnsreg.http.sse import frame


def parse(raw: bytes) -> tuple[list[SseMessage], SseParser]:
    parser = SseParser()
    out = []
    for line in raw.decode().split("\n"):
        message = parser.feed_line(line)
        if message is not None:
            out.append(message)
    return out, parser


def test_event_round_trip() -> None:
    raw = frame(id=42, event="registered", data='{"a": 1}')
    assert raw == b'event: registered\nid: 42\ndata: {"a": 1}\n\n'
    messages, parser = parse(raw)
    assert messages == [SseMessage("registered", '{"a": 1}', "42")]
    assert parser.last_id == "42"


def test_multiline_data_travels_as_several_fields() -> None:
    messages, _ = parse(frame(data="one\ntwo"))
    assert messages == [SseMessage("message", "one\ntwo", "")]


def test_id_only_frame_moves_last_id_without_data() -> None:
    messages, parser = parse(frame(retry_ms=1000, id=7) + frame(comment="keepalive", id=9))
    assert [(m.data, m.last_id) for m in messages] == [(None, "7"), (None, "9")]
    assert parser.retry_ms == 1000


def test_comments_alone_dispatch_nothing() -> None:
    messages, parser = parse(frame(comment="keepalive"))
    assert messages == []
    assert parser.last_id == ""


def test_last_id_persists_across_events_and_crlf_is_accepted() -> None:
    parser = SseParser()
    lines = ["id: 3\r", "data: x\r", "\r", "data: y", ""]
    messages = [m for m in (parser.feed_line(line) for line in lines) if m is not None]
    assert [(m.data, m.last_id) for m in messages] == [("x", "3"), ("y", "3")]


def test_field_without_space_and_unknown_fields() -> None:
    messages, _ = parse(b"data:tight\nfoo: bar\nevent:x\n\n")
    assert messages == [SseMessage("x", "tight", "")]


def test_event_name_must_be_one_line() -> None:
    with pytest.raises(ValueError, match="single line"):
        frame(event="a\nb", data="x")
