"""The HTTP API (aiohttp): register, heartbeat, deregister, maintenance, list, status, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from dnsreg import __version__
from dnsreg.core.admission import AdmissionPolicy
from dnsreg.core.errors import (
    Conflict,
    DnsregError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from dnsreg.core.model import Instance
from dnsreg.core.names import check_label
from dnsreg.core.registry import Registry
from dnsreg.http.admission import admit_checks, may_check_any_host
from dnsreg.http.auth import Auth, AuthMode
from dnsreg.http.drain import DrainRoute
from dnsreg.http.events import EventHub
from dnsreg.http.explain import Explainer, add_explain_route
from dnsreg.http.listing import Listing
from dnsreg.http.metrics import Metrics
from dnsreg.http.schema import MaintenanceBody, RegisterBody, decode_body, to_registration
from dnsreg.http.service_counts import ServiceCounts
from dnsreg.http.ui import add_ui_routes
from dnsreg.store import Store

log = logging.getLogger("dnsreg.http")

# The one place where an error becomes an HTTP status.
STATUS_FOR_ERROR: dict[type[DnsregError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    RequestTimeout: 408,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unavailable: 503,
}

_JSON_TYPES = {"application/json", "application/x-www-form-urlencoded", "text/plain", ""}
_encoder = msgspec.json.Encoder()


def json_response(
    body: Any, *, status: int = 200, revision: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:  # fmt: skip
    headers = dict(headers or {})
    if revision is not None:
        headers["X-Dnsreg-Index"] = str(revision)
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json",
        headers=headers,
    )  # fmt: skip


def error_response(exc: DnsregError) -> web.Response:
    status = next((s for t, s in STATUS_FOR_ERROR.items() if isinstance(exc, t)), 500)
    body: dict[str, Any] = {"error": exc.message}
    if exc.field is not None or exc.detail is not None:
        body["detail"] = exc.detail if exc.detail is not None else {"field": exc.field}
    # RFC 6750 §3: a 401 names the scheme the client should use.
    headers = {"WWW-Authenticate": 'Bearer realm="dnsreg"'} if status == 401 else None
    return json_response(body, status=status, headers=headers)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except DnsregError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(PayloadTooLarge(f"request body too large: {exc.text}"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": exc.reason}, status=exc.status)
    except ConnectionError:
        # The client went away mid-request (reset, closed): nothing is wrong here.
        log.debug("client left during %s %s", request.method, request.path)
        return web.Response(status=400)  # unsendable: the connection is gone
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": "internal server error"}, status=500)


class Api:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        metrics: Metrics,
        *,
        max_body_bytes: int,
        describe: Callable[[], dict[str, Any]],
        auth: Auth,
        events_buffer: int = 10_000,
        events_keepalive: float = 15.0,
        explain: Explainer | None = None,
        body_timeout: float = 30.0,
        admission: AdmissionPolicy = AdmissionPolicy(),  # noqa: B008 - frozen
    ) -> None:
        self.registry = registry
        self.admission = admission
        self.store = store
        self.metrics = metrics
        self.describe = describe
        self.auth = auth
        self.body_timeout = body_timeout
        self.listing = Listing(registry, json_response)
        self.counts = ServiceCounts(registry)
        self.started = time.time()
        # Change notification (SPEC §5): the hub hears every change the store applies.
        self.events = EventHub(
            registry.revision, capacity=events_buffer, keepalive=events_keepalive
        )
        store.subscribe(self.events.on_change)
        self.app = web.Application(
            client_max_size=max_body_bytes,
            middlewares=[errors_middleware, auth.reads_middleware],
        )
        # Open streams and blocked reads end first on shutdown, so stopping never hangs.
        self.app.on_shutdown.append(self.events.close)
        r = self.app.router
        # Empty segments match too, so "/v1/services//instances/x" is a 400 naming the
        # field (check_label), not a bare 404 from the router.
        base = "/v1/services/{service:[^{}/]*}/instances/{id:[^{}/]*}"
        # Every write asks the one authorisation function first (SPEC §7).
        write = auth.write
        r.add_put(base, write("register", self.register))
        r.add_delete(base, write("deregister", self.deregister))
        r.add_put(base + "/heartbeat", write("heartbeat", self.heartbeat))
        r.add_put(base + "/maintenance", write("maintenance", self.maintenance))
        drain = DrainRoute(
            registry, store, read_body=self._body, view=self._instance_view, respond=json_response
        )
        r.add_put(base + "/drain", write("drain", drain.handle))
        # Reads take ?index=&wait= (SPEC §5); writes skip that layer, which costs
        # measurable time per heartbeat.
        r.add_get("/v1/services", self._blocking(self.list_services))
        r.add_get("/v1/services/{service}", self._blocking(self.show_service))
        r.add_get(base, self._blocking(self.show_instance))
        r.add_get("/v1/status", self._blocking(self.status))
        r.add_get("/v1/events", self.events.stream, allow_head=False)
        r.add_get("/metrics", self._blocking(self.prometheus))
        if explain is not None:
            add_explain_route(r, explain)
        add_ui_routes(r)

    # ---------------------------------------------------------------- helpers
    def _blocking(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        blocking = self.events.blocking_middleware

        async def read(request: web.Request) -> web.StreamResponse:
            return await blocking(request, handler)

        return read

    async def _body(self, request: web.Request) -> bytes:
        ctype = request.content_type if request.headers.get("Content-Type") else ""
        # curl -d sends form-urlencoded; accept it when the body is JSON.
        if ctype not in _JSON_TYPES:
            raise UnsupportedMediaType(f"send the body as application/json, not {ctype}")
        try:
            async with asyncio.timeout(self.body_timeout):  # a body trickling in holds a slot
                return await request.read()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.body_timeout:g}s"
            ) from None

    @staticmethod
    def _names(request: web.Request) -> tuple[str, str]:
        return (
            check_label(request.match_info["service"], field="service"),
            check_label(request.match_info["id"], field="id"),
        )

    def _checks_any_host(self, request: web.Request) -> bool:
        tokens = self.auth.mode is AuthMode.TOKENS
        principal = self.auth.principal(request) if tokens else None
        return may_check_any_host(self.admission, principal, tokens=tokens)

    def _instance_view(self, instance: Instance) -> dict[str, Any]:
        view = instance.to_json()
        view["panic"] = self.registry.in_panic(instance.reg.service)
        return view

    # -------------------------------------------------------------- handlers
    async def register(self, request: web.Request) -> web.Response:
        service, instance_id = self._names(request)
        body: RegisterBody = decode_body(await self._body(request), RegisterBody)
        reg = to_registration(service, instance_id, body, request.remote, self.admission)
        reg = await admit_checks(reg, any_host=self._checks_any_host(request))
        change = await self.store.register(reg)
        assert change.after is not None
        created = change.before is None
        self.metrics.registrations.inc()
        return json_response(
            {
                "instance": self._instance_view(change.after),
                "created": created,
                "lease_deadline": change.after.deadline,
                "revision": change.revision,
            },
            status=201 if created else 200,
            revision=change.revision,
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        service, instance_id = self._names(request)
        instance = await self.store.heartbeat(service, instance_id)
        self.metrics.heartbeats.inc()
        return json_response(
            {"lease_deadline": instance.deadline, "revision": self.registry.revision},
            revision=self.registry.revision,
        )

    async def deregister(self, request: web.Request) -> web.Response:
        service, instance_id = self._names(request)
        change = await self.store.deregister(service, instance_id)
        return json_response(
            {"deregistered": True, "revision": change.revision}, revision=change.revision
        )

    async def maintenance(self, request: web.Request) -> web.Response:
        service, instance_id = self._names(request)
        body: MaintenanceBody = decode_body(await self._body(request), MaintenanceBody)
        reason = (body.reason or "maintenance") if body.enable else None
        await self.store.set_maintenance(service, instance_id, reason)
        instance = self.registry.require(service, instance_id)
        return json_response(
            {"instance": self._instance_view(instance), "revision": self.registry.revision},
            revision=self.registry.revision,
        )

    async def list_services(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "").lower()
        revision, out = await self.counts.listing(prefix)
        return json_response({"revision": revision, "services": out}, revision=revision)

    async def show_service(self, request: web.Request) -> web.StreamResponse:
        return await self.listing.show(request)

    async def show_instance(self, request: web.Request) -> web.Response:
        service, instance_id = self._names(request)
        instance = self.registry.require(service, instance_id)
        revision = self.registry.revision
        return json_response(
            {"revision": revision, "instance": self._instance_view(instance)}, revision=revision
        )

    async def status(self, request: web.Request) -> web.Response:
        revision = self.registry.revision
        degraded = self.store.degraded
        body = {
            "status": "degraded" if degraded else "ok",
            **({"reason": degraded} if degraded else {}),
            "version": __version__,
            "revision": revision,
            "uptime": round(time.time() - self.started, 3),
            "services": sum(1 for _ in self.registry.services()),
            "instances": len(self.registry),
            "store": self.store.describe(),
            "events": {
                "streams": self.events.streams,
                "blocking_queries": self.events.blocked,
                "oldest_revision": self.events.log.floor,
            },
            **self.describe(),
        }
        return json_response(body, revision=revision)

    async def prometheus(self, request: web.Request) -> web.Response:
        await self.metrics.refresh()
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
