"""The dashboard's files over HTTP: redirect, content types, caching, and a strict CSP."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from tests.helpers import Running


class _Inline(HTMLParser):
    """Finds what a strict CSP would block: inline scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.refs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style":
            self.problems.append("<style>")
        if tag == "script":
            if not names.get("src"):
                self.problems.append("inline <script>")
            else:
                self.refs.append(str(names["src"]))
        if tag == "link" and names.get("href"):
            self.refs.append(str(names["href"]))
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{name}= on <{tag}>")


async def test_root_redirects_to_the_dashboard(running: Running) -> None:
    async with running.http.get(running.base + "/", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/ui/"
    async with running.http.get(running.base + "/ui", allow_redirects=False) as resp:
        assert resp.status == 302


async def test_files_have_types_csp_and_revalidating_cache(running: Running) -> None:
    async with running.http.get(running.base + "/ui/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    parser = _Inline()
    parser.feed(html)
    assert parser.problems == []
    assert set(parser.refs) == {"app.css", "app.js", "favicon.svg"}
    types = {
        "app.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "favicon.svg": "image/svg+xml",
    }
    for name, ctype in types.items():
        async with running.http.get(f"{running.base}/ui/{name}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == ctype
            assert resp.headers["Cache-Control"] == "no-cache"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            etag = resp.headers["ETag"]
            body = await resp.read()
        assert body
        assert re.fullmatch(r'"[0-9a-f]{16}"', etag)
        headers = {"If-None-Match": etag}
        async with running.http.get(f"{running.base}/ui/{name}", headers=headers) as resp:
            assert resp.status == 304
            assert await resp.read() == b""


async def test_nothing_outside_the_package_is_served(running: Running) -> None:
    for path in ("/ui/nope.js", "/ui/..%2Fapi.py", "/ui/api.py", "/ui/%2e%2e/app.py"):
        async with running.http.get(running.base + path) as resp:
            assert resp.status == 404, path
            assert resp.content_type == "application/json"


async def test_the_page_uses_no_other_origin(running: Running) -> None:
    """Works offline: no CDN, no absolute URL in any file."""
    for name in ("", "app.js", "app.css"):
        async with running.http.get(f"{running.base}/ui/{name}") as resp:
            text = await resp.text()
        assert not re.search(r"https?://", text), name


def _contrast(fg: str, bg: str) -> float:
    """WCAG 2.2 contrast ratio of two #rrggbb colours (§1.4.3, relative luminance)."""

    def luminance(colour: str) -> float:
        channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


async def test_text_colours_meet_wcag_aa_in_both_themes(running: Running) -> None:
    async with running.http.get(running.base + "/ui/app.css") as resp:
        css = await resp.text()
    light, dark = css.split("@media (prefers-color-scheme: dark)", 1)
    pairs = [("fg", "bg"), ("muted", "bg"), ("muted", "panel"), ("accent", "bg"),
             ("pass", "pass-bg"), ("warn", "warn-bg"), ("crit", "crit-bg"),
             ("maint", "maint-bg")]  # fmt: skip
    for theme in (light, dark.split("}\n}", 1)[0]):
        colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", theme))
        for fg, bg in pairs:
            ratio = _contrast(colours[fg], colours[bg])
            assert ratio >= 4.5, (fg, bg, ratio)
