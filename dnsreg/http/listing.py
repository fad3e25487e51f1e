"""``GET /v1/services/{service}``: one service's instances, paged or streamed.

A service of 50 000 instances rendered as one body costs the event loop far
more than the ~20 ms any request may hold it (DNS waits meanwhile). So:

* ``?limit=N&after=ID`` pages in id order: the body says ``next`` (the ``after``
  for the following page, null on the last) and ``total``;
* without ``limit``, a large listing is streamed in chunks, yielding the loop
  between them; the instances are the ones current when the request began
  (instances are immutable values, so the snapshot is a list of references).

The id order of a service is sorted once per service revision and reused.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Instance
from dnsreg.core.names import check_label
from dnsreg.core.registry import Registry

MAX_PAGE = 10_000
STREAM_OVER = 200  # instances; fewer go out as one body (shareable by blocking reads)
CHUNK = 200  # instances encoded between two yields of the loop (~5 ms)

_encode = msgspec.json.Encoder().encode


def parse_limit(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidInput(f"limit: must be a whole number from 1 to {MAX_PAGE}", field="limit")
    return int(text)


class Listing:
    def __init__(
        self,
        registry: Registry,
        respond: Callable[..., web.Response],
    ) -> None:
        self.registry = registry
        self.respond = respond  # the API's json_response
        self._order: dict[str, tuple[int, list[str]]] = {}

    def sorted_ids(self, service: str) -> list[str]:
        revision = self.registry.service_revision(service)
        cached = self._order.get(service)
        if cached is not None and cached[0] == revision:
            return cached[1]
        ids = sorted(self.registry.instances(service))
        if ids:
            self._order[service] = (revision, ids)
        else:
            self._order.pop(service, None)
        return ids

    async def show(self, request: web.Request) -> web.StreamResponse:
        registry = self.registry
        service = check_label(request.match_info["service"], field="service")
        tags = [check_label(t, field="tag") for t in request.query.getall("tag", [])]
        passing = "passing" in request.query and request.query["passing"] not in ("0", "false")
        limit = parse_limit(request.query.get("limit"))
        after_text = request.query.get("after")
        after = check_label(after_text, field="after") if after_text else None
        instances = registry.instances(service)
        if tags:
            pool = registry.tagged(service, tags)  # in id order
        else:
            ids = self.sorted_ids(service)
            if limit is not None and not passing:
                # Page before anything is built: a page costs its size, not the service's.
                start = bisect.bisect_right(ids, after) if after is not None else 0
                page_ids = ids[start : start + limit + 1]
                pool = [instances[i] for i in page_ids]
                after = None  # applied
                total = len(ids)
            else:
                pool = [instances[i] for i in ids]
        if passing:
            served = {id(i) for i in registry.served(service, pool).instances}
            pool = [i for i in pool if id(i) in served]
        if limit is None or tags or passing:
            total = len(pool)
        if after is not None:
            pool = pool[bisect.bisect_right([i.reg.id for i in pool], after) :]
        head: dict[str, Any] = {
            "revision": registry.revision,
            "service": service,
            "panic": registry.in_panic(service),
        }
        if limit is not None:
            more = len(pool) > limit
            pool = pool[:limit]
            head["next"] = pool[-1].reg.id if more and pool else None
            head["total"] = total
        panic = head["panic"]
        if len(pool) <= STREAM_OVER:
            head["instances"] = [_view(i, panic) for i in pool]
            return self.respond(head, revision=head["revision"])
        return await self._stream(request, head, pool, panic)

    async def _stream(
        self, request: web.Request, head: dict[str, Any], pool: list[Instance], panic: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "X-Dnsreg-Index": str(head["revision"])}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        head["instances"] = []
        opening = _encode(head)
        await response.write(opening[:-2])  # ...,"instances":[  (the closing "]}" comes last)
        for start in range(0, len(pool), CHUNK):
            chunk = _encode([_view(i, panic) for i in pool[start : start + CHUNK]])
            await response.write((b"," if start else b"") + chunk[1:-1])
            await asyncio.sleep(0)  # let DNS and other requests in between chunks
        await response.write(b"]}")
        await response.write_eof()
        return response


def _view(instance: Instance, panic: bool) -> dict[str, Any]:
    view = instance.to_json()
    view["panic"] = panic
    return view
