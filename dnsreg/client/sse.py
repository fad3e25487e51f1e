"""Server-Sent Events parsing, the client's direction (WHATWG HTML Living Standard §9.2).

Pure: lines in, messages out. The server's framing is :mod:`dnsreg.http.sse`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
