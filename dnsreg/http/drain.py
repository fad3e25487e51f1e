"""``PUT /v1/services/{svc}/instances/{id}/drain``: withdraw from DNS now, say how long to wait.

The server does not hold the request for the wait: it sets maintenance (reason
"draining") and answers at once with ``wait`` (the instance's ``dns_ttl``, see
:mod:`dnsreg.core.drain`) and ``drained_at``. The caller waits and then stops or
deregisters the instance. Holding the request instead would keep a connection and
a slot open per drain, break behind proxies with shorter timeouts, and leave the
deregistration to a timer that a server restart or a failover to another node
(etcd store) would forget; a client that waits sees progress and can be stopped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from dnsreg.core.drain import drain_reason, drain_wait
from dnsreg.core.model import Instance
from dnsreg.core.names import check_label
from dnsreg.core.registry import Registry
from dnsreg.http.schema import decode_body
from dnsreg.store import Store


class DrainBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


class DrainRoute:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        *,
        read_body: Callable[[web.Request], Awaitable[bytes]],
        view: Callable[[Instance], dict[str, Any]],
        respond: Callable[..., web.Response],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.store = store
        self.read_body = read_body
        self.view = view
        self.respond = respond
        self.clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        service = check_label(request.match_info["service"], field="service")
        instance_id = check_label(request.match_info["id"], field="id")
        raw = await self.read_body(request) if request.body_exists else b""
        body = decode_body(raw, DrainBody) if raw.strip() else DrainBody()
        reason = drain_reason(body.reason)  # checked before anything changes
        before = self.registry.require(service, instance_id)  # 404 before any write
        await self.store.set_maintenance(service, instance_id, reason)
        instance = self.registry.require(service, instance_id)
        wait = drain_wait(instance)
        revision = self.registry.revision
        return self.respond(
            {
                "instance": self.view(instance),
                "was_served": before.served,
                "wait": wait,
                "drained_at": self.clock() + wait,
                "revision": revision,
            },
            revision=revision,
        )
