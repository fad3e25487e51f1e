"""Server-Sent Events framing, the server's direction (WHATWG HTML Living Standard §9.2).

Pure: strings in, bytes out. The server encodes each change once and hands the
same bytes to every stream; the client's parser is :mod:`dnsreg.client.sse`.
"""

from __future__ import annotations


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
