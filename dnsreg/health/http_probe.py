"""What an HTTP health check sends and how it reads the answer. Pure: bytes in, verdict out.

A health check needs one thing from HTTP/1.1 (RFC 9112): the status code of
a GET, plus the head of the body for a human to read. The checker therefore
sends one request with ``Connection: close`` and reads only as far as it
must: the status line, the framing headers and at most ``limit`` bytes of
body, then hangs up.

Why not a general HTTP client: at 10 000 instances checked every 10 s the
checker makes 1 000 requests a second, and a full client session (aiohttp)
costs about 400 µs of CPU per request on the benchmark machine against about
150 µs for this plus a plain asyncio transport: the difference between a
third and two thirds of a core (docs/performance.md, "Health benchmark"). What is left out on
purpose: redirects (SPEC §4: anything but 2xx and 429 is critical, so a 3xx
is reported, not followed), proxies, cookies, compression and keep-alive
(each probe is a fresh connection, as in Consul: a health check should
prove the target still accepts connections).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A response head longer than this is not a health endpoint talking.
HEAD_LIMIT = 64 * 1024
_STATUS = re.compile(r"HTTP/1\.[01] (\d{3})(?: (.*))?")


class ProtocolError(Exception):
    """The peer did not answer with an HTTP/1.x response we can read."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    reason: str
    body: bytes  # at most the reader's limit, transfer coding removed


class ResponseReader:
    """Reads one response from the bytes fed in, only as far as a verdict needs.

    :meth:`feed` returns the answer as soon as the status line, the headers and
    ``limit`` bytes of body (or the whole body, if shorter) are in; :meth:`eof`
    gives the answer when the peer closes first. Interim 1xx responses are
    skipped (RFC 9110 §15.2).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._status: int | None = None
        self._reason = ""
        self._length: int | None = None  # body length, when known
        self._chunked = False

    def feed(self, data: bytes) -> HttpAnswer | None:
        self._buf += data
        if self._status is None and not self._read_head():
            return None
        return self._body(final=False)

    def eof(self) -> HttpAnswer:
        """The peer closed the connection: whatever came is all there is."""
        if self._status is None:
            if not self._buf:
                raise ProtocolError("the server closed the connection without answering")
            raise ProtocolError("the server closed the connection in the middle of its answer")
        answer = self._body(final=True)
        assert answer is not None
        return answer

    # -------------------------------------------------------------- internals
    def _read_head(self) -> bool:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > HEAD_LIMIT:
                    raise ProtocolError(f"response head longer than {HEAD_LIMIT} bytes")
                return False
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            status_line, *header_lines = head.split("\r\n")
            match = _STATUS.fullmatch(status_line)
            if match is None:
                raise ProtocolError(f"not an HTTP/1.x response: {status_line[:80]!r}")
            status = int(match.group(1))
            if status in (100, 102, 103):
                continue  # interim; the real answer follows
            headers: dict[str, str] = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ProtocolError(f"malformed header line: {line[:80]!r}")
                headers[name.lower()] = value.strip()
            self._status, self._reason = status, (match.group(2) or "").strip()
            # RFC 9112 §6.3: no body for 204 and 304; chunked wins over Content-Length.
            if status in (204, 304):
                self._length = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in headers:
                value = headers["content-length"]
                if not value.isdigit():
                    raise ProtocolError(f"bad Content-Length: {value[:40]!r}")
                self._length = int(value)
            return True

    def _body(self, *, final: bool) -> HttpAnswer | None:
        assert self._status is not None
        if self._chunked:
            body, ended = _dechunk(bytes(self._buf), self.limit)
            done = ended or len(body) >= self.limit or len(self._buf) > 4 * self.limit + 1024
        else:
            body = bytes(self._buf[: self.limit])
            wanted = self.limit if self._length is None else min(self._length, self.limit)
            done = len(body) >= wanted
        if not (done or final):
            return None
        return HttpAnswer(self._status, self._reason, body[: self.limit])


def _dechunk(raw: bytes, limit: int) -> tuple[bytes, bool]:
    """Decode as much of a chunked body (RFC 9112 §7.1) as ``raw`` holds.

    Returns the data and whether the last chunk was seen. Stops early at
    ``limit`` bytes of data or at anything it cannot read (best effort: this
    feeds a human-readable output, the verdict is the status code).
    """
    out = bytearray()
    at = 0
    while len(out) < limit:
        line_end = raw.find(b"\r\n", at)
        if line_end < 0:
            return bytes(out), False
        size_text = raw[at:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), True  # not chunked after all; show what we have
        if size == 0:
            return bytes(out), True
        start = line_end + 2
        out += raw[start : start + size]
        if start + size + 2 > len(raw):
            return bytes(out), False
        at = start + size + 2
    return bytes(out), False
