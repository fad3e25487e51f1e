"""The dashboard: static HTML/CSS/JS shipped as package data, served at ``/ui/``.

No build step and nothing fetched from elsewhere, so it works offline. The
page talks only to the public API (``/v1/services``, ``/v1/events``, the
maintenance route). Every file goes out with a strict Content-Security-Policy
(scripts and styles from this origin only, no inline code) and an ETag with
``Cache-Control: no-cache``: browsers keep a copy but revalidate it, so an
upgraded server never runs against a stale script (RFC 9111 §5.2.2.4).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``dnsreg/http/ui/`` by name, read once at start-up."""
    assets = {}
    for entry in resources.files("dnsreg.http").joinpath("ui").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        assets[entry.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    return assets


def add_ui_routes(router: web.UrlDispatcher) -> None:
    assets = load_assets()

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def serve(request: web.Request) -> web.StreamResponse:
        asset = assets.get(request.match_info.get("file") or "index.html")
        if asset is None:
            raise web.HTTPNotFound()
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        return web.Response(body=asset.body, headers=headers)

    router.add_get("/", redirect)
    router.add_get("/ui", redirect)
    router.add_get("/ui/", serve)
    router.add_get("/ui/{file:[A-Za-z0-9_-]+\\.[a-z]+}", serve)
