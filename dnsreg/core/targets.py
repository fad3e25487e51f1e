"""Where a health check connects: an http(s) URL parsed once, with the request it sends. Pure.

Registration validates a check's URL with the same parser the checker connects
with, so a URL that was accepted is one that can be checked.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from dnsreg import __version__

_PATH_SAFE = "/%:@!$&'()*+,;=~-._?"


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """A parsed check URL and the request bytes to send to it."""

    url: str
    host: str  # for connecting: no brackets, IDNA-encoded
    port: int
    tls: bool
    request: bytes

    @classmethod
    def parse(cls, url: str) -> HttpTarget:
        """Parse ``url``; ValueError when it cannot be checked."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)  # .port raises ValueError when out of range
        host = parts.hostname.encode("idna").decode("ascii")
        shown = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            shown += f":{parts.port}"
        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_PATH_SAFE)
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {shown}",
            f"User-Agent: dnsreg-health/{__version__}",
            "Accept: */*",
            "Connection: close",
        ]
        if parts.username is not None:
            # RFC 7617: credentials in the URL become Basic authentication.
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines.append("Authorization: Basic " + base64.b64encode(pair.encode()).decode())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return cls(url=url, host=host, port=port, tls=tls, request=request)
