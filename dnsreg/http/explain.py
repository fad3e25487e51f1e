"""``GET /v1/explain?name=&type=``: why DNS answers a name the way it does.

The reasoning lives in ``dnsreg.dns.explain`` (pure, next to the answer
builder); HTTP may not import DNS, so the composition root hands in a callable
that takes the raw query values and returns the JSON-ready explanation.
Bad input raises :class:`dnsreg.core.errors.InvalidInput`, which the API's
one error mapping turns into a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

Explainer = Callable[[str, str], dict[str, Any]]

_encoder = msgspec.json.Encoder()


def add_explain_route(router: web.UrlDispatcher, explain: Explainer) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = explain(request.query.get("name", ""), request.query.get("type", "A"))
        return web.Response(body=_encoder.encode(body), content_type="application/json")

    router.add_get("/v1/explain", handler)
