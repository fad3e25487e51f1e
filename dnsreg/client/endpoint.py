"""Where the API is and what went wrong reaching it: ``--api`` parsing and error wording.

``--api`` takes a URL or a bare ``host:port``. A bare address gets ``http://``,
or ``https://`` when a CA or a client certificate is given (only TLS uses them, so
that is what the user means); an explicit scheme always wins.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from dnsreg.core.errors import InvalidInput, ServerError


class NotDnsreg(ServerError):
    """Something answered, but not the dnsreg API (HTML, a foreign 404, another service)."""


def api_url(text: str, *, tls: bool = False) -> str:
    """``host:port``, ``[v6]:port`` or a URL into a base URL without a trailing slash."""
    text = text.strip()
    if not text:
        raise InvalidInput("api: empty; give host:port or http(s)://host:port", field="api")
    if "://" not in text:
        text = ("https://" if tls else "http://") + text
    try:
        url = URL(text)
        port = url.port  # raises on a non-numeric port
    except ValueError as exc:
        raise InvalidInput(f"api: {text!r} is not a URL ({exc})", field="api") from exc
    if url.scheme not in ("http", "https"):
        raise InvalidInput(f"api: {text!r}: the scheme must be http or https", field="api")
    if not url.host:
        raise InvalidInput(f"api: {text!r} names no host", field="api")
    del port
    return text.rstrip("/")


def refused(api: str, exc: BaseException) -> str | None:
    """ "no dnsreg server at URL (connection refused)" when nothing listens there."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    ):
        return f"no dnsreg server at {api} (connection refused)"
    if isinstance(exc, ConnectionRefusedError):
        return f"no dnsreg server at {api} (connection refused)"
    return None


def not_dnsreg(api: str, method: str, path: str, status: int, content_type: str) -> NotDnsreg:
    what = content_type or "no content type"
    return NotDnsreg(
        f"not a dnsreg server at {api}: {method} {path} answered HTTP {status} ({what}), "
        "not dnsreg's JSON; check --api"
    )


def require_keys(api: str, path: str, payload: dict[str, object], *keys: str) -> None:
    """A JSON answer without the fields dnsreg always sends came from something else."""
    missing = [k for k in keys if k not in payload]
    if missing:
        raise NotDnsreg(
            f"not a dnsreg server at {api}: GET {path} answered JSON without "
            f"{', '.join(missing)}; check --api"
        )
