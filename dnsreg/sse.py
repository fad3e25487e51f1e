"""Server-Sent Events framing, both directions (WHATWG HTML Living Standard §9.2).

Pure: bytes and strings in, bytes and values out. The server encodes each change
once and hands the same bytes to every stream; the client feeds lines to
:class:`SseParser`.
"""

from __future__ import annotations

from dataclasses import dataclass


def frame(
    *,
    data: str | None = None,
    event: str | None = None,
    id: int | None = None,
    retry_ms: int | None = None,
    comment: str | None = None,
) -> bytes:
    """One frame, terminated by the blank line that dispatches it.

    A frame with an ``id`` but no ``data`` dispatches no event, yet still moves
    the receiver's last event ID (HTML §9.2.6, "dispatch the event", step 1);
    the server uses that to tell idle watchers how far they have been brought.
    """
    lines: list[str] = []
    if comment is not None:
        lines.extend(f": {part}" for part in comment.splitlines() or [""])
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    if event is not None:
        _single_line(event, "event")
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    if data is not None:
        # A data field cannot hold a newline: each line travels as its own field.
        lines.extend(f"data: {part}" for part in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def _single_line(value: str, field: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {field} must be a single line: {value!r}")


@dataclass(frozen=True, slots=True)
class SseMessage:
    """What one blank line dispatched.

    ``data`` is None for a frame that carried no data: per the standard no event
    fires, but ``last_id`` may have moved, and a resuming client wants to know.
    """

    event: str
    data: str | None
    last_id: str


class SseParser:
    """Incremental event-stream parser, one line (without its terminator) at a time."""

    def __init__(self) -> None:
        self.last_id = ""
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._touched = False  # any field since the last dispatch

    def feed_line(self, line: str) -> SseMessage | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment: keeps proxies from closing an idle stream
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry":
            if value.isdigit():
                self.retry_ms = int(value)
        else:
            return None  # unknown fields are ignored
        self._touched = True
        return None

    def _dispatch(self) -> SseMessage | None:
        if not self._touched:
            return None
        data = "\n".join(self._data) if self._data else None
        message = SseMessage(self._event or "message", data, self.last_id)
        self._event, self._data, self._touched = "", [], False
        return message
