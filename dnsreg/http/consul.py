"""The Consul-compatible HTTP subset (SPEC §5): Consul's routes and shapes over dnsreg's registry.

Tools that speak Consul (py-consul, the npm ``consul`` client, Prometheus
``consul_sd_configs``, consul-template, ...) use dnsreg unchanged through these
routes. They translate; they hold nothing: every read is a view of the one
registry and every write goes through the store like a native write.

The mapping:

* The whole dnsreg server is one synthetic Consul node (its name and advertised
  address) in one datacenter; the "agent" and the "catalog" are the same registry.
* A Consul service is an instance with no lease (``ttl`` 0). Consul's service
  ``ID`` is the instance id and must be unique across services, as in Consul.
* Checks: ``HTTP`` and ``TCP`` are run by the health checker; ``TTL`` checks are
  reported by the service (``/v1/agent/check/pass|warn|fail|update``) and turn
  critical when it stops. Maintenance shows as Consul's
  ``_service_maintenance:<id>`` critical check.
* Every GET is a blocking query (``?index=&wait=``, features/blocking.mdx) on
  the registry revision, which is ``X-Consul-Index``.
* Errors are plain text with the status of the one error table (``api.STATUS_FOR_ERROR``),
  the way Consul answers; KV, sessions, the ACL API and Connect are 404s that say so.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from aiohttp import web

from dnsreg import __version__
from dnsreg.core.acl import Principal, Right
from dnsreg.core.admission import AdmissionPolicy
from dnsreg.core.changelog import blocking_timeout, parse_index, parse_wait
from dnsreg.core.errors import Conflict, DnsregError, InvalidInput, NotFound, PayloadTooLarge
from dnsreg.core.model import Health, Instance
from dnsreg.core.registry import Change, ChangeKind, Registry
from dnsreg.http.admission import admit_checks, may_check_any_host
from dnsreg.http.api import STATUS_FOR_ERROR
from dnsreg.http.auth import Auth, AuthMode, audit
from dnsreg.http.consul_schema import (
    STATUS_OF,
    ConsulCheckUpdate,
    ConsulService,
    decode,
    to_registration,
)
from dnsreg.http.consul_views import (
    DATACENTER,
    DEFAULT_MAINTENANCE_NOTE,
    INDEXES,
    ConsulViews,
    check_id,
)
from dnsreg.http.events import INDEX_HEADER, EventHub
from dnsreg.store import Store

log = logging.getLogger("dnsreg.consul")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Records a TTL check report: (service, id, check index, health, output) → the instance.
ReportTtl = Callable[[str, str, int, Health, str], Awaitable[Instance]]

#: Parts of Consul dnsreg does not offer, answered 404 with a sentence saying so.
UNSUPPORTED = {
    "/v1/kv": "the KV store",
    "/v1/session": "sessions",
    "/v1/acl": "the ACL API (dnsreg's tokens come from its acl_file)",
    "/v1/connect": "Connect (service mesh)",
    "/v1/agent/connect": "Connect (service mesh)",
}
_encoder = msgspec.json.Encoder()


def _text(message: str, status: int) -> web.Response:
    body = message + "\n" if message else ""
    return web.Response(text=body, status=status, content_type="text/plain")


class ConsulApi:
    """Consul's agent, catalog, health and status routes over the registry and the store."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        events: EventHub,
        *,
        node: str,
        address: str,
        report_ttl: ReportTtl,
        auth: Auth,
        admission: AdmissionPolicy = AdmissionPolicy(),  # noqa: B008 - frozen
    ) -> None:
        self.admission = admission
        self.registry = registry
        self.store = store
        self.events = events
        self.views = ConsulViews(node, address)
        self.report_ttl = report_ttl
        self.auth = auth
        # Consul addresses services and checks by ID alone; dnsreg keys instances by
        # (service, id). These indexes, kept by the store's change stream, save a scan
        # of every instance on each TTL report.
        self._services_of: dict[str, set[str]] = {}
        self._check_at: dict[str, tuple[str, str, int]] = {}
        for instance in registry.all_instances():
            self._index(instance)
        store.subscribe(self._on_change)

    def install(self, router: web.UrlDispatcher) -> None:
        r = router
        get, put = self._read, self._write
        r.add_put("/v1/agent/service/register", put(self.register))
        r.add_put("/v1/agent/service/deregister/{id}", put(self.deregister))
        r.add_put("/v1/agent/service/maintenance/{id}", put(self.maintenance))
        for status in ("pass", "warn", "fail"):
            r.add_put(f"/v1/agent/check/{status}/{{check_id}}", put(self.check_status))
        r.add_put("/v1/agent/check/update/{check_id}", put(self.check_update))
        r.add_get("/v1/agent/services", get(self.agent_services))
        r.add_get("/v1/agent/service/{id}", get(self.agent_service))
        r.add_get("/v1/agent/checks", get(self.agent_checks))
        r.add_get("/v1/agent/self", get(self.agent_self))
        r.add_get("/v1/status/leader", get(self.leader))
        r.add_get("/v1/status/peers", get(self.peers))
        r.add_get("/v1/catalog/services", get(self.catalog_services))
        r.add_get("/v1/catalog/service/{service}", get(self.catalog_service))
        r.add_get("/v1/catalog/datacenters", get(self.datacenters))
        r.add_get("/v1/health/service/{service}", get(self.health_service))
        r.add_get("/v1/health/checks/{service}", get(self.health_checks))
        r.add_get("/v1/health/state/{state}", get(self.health_state))
        for prefix in UNSUPPORTED:
            r.add_route("*", prefix + "{tail:(/.*)?}", self.unsupported)

    # ------------------------------------------------------------- plumbing
    def _read(self, handler: Handler) -> Handler:
        """A GET, as a blocking query when ``?index=`` is given, with Consul's headers."""

        async def read(request: web.Request) -> web.StreamResponse:
            try:
                self._check_query(request)
                await self._block(request)
                # The revision the read saw, taken before it runs: a change it
                # misses is never hidden behind a newer index.
                seen = self.events.log.head
                response = await handler(request)
            except DnsregError as exc:
                return self._error(exc)
            response.headers[INDEX_HEADER] = str(seen)
            # features/blocking.mdx: the index is always above 0, or clients that
            # send it back unchecked would poll in a busy loop.
            response.headers["X-Consul-Index"] = str(max(1, seen))
            response.headers["X-Consul-KnownLeader"] = "true"  # one node: its own leader
            response.headers["X-Consul-LastContact"] = "0"
            return response

        return read

    async def _block(self, request: web.Request) -> None:
        """``?index=N&wait=D``: hold the read until a change it concerns, through the
        same EventHub as the native reads (woken by the change, never polling)."""
        text = request.query.get("index")
        if text is None:
            return
        index = parse_index(text)
        if index == 0:
            return  # Consul: index 0 answers at once
        hold = blocking_timeout(parse_wait(request.query.get("wait")), self.events.rng)
        service = request.match_info.get("service")
        # An index above the head (the 1 of an empty registry, another server's
        # history) waits for the next change rather than for one past it.
        since = min(index, self.events.log.head)
        await self.events.wait(since, hold, service=service.lower() if service else None)

    def _write(self, handler: Handler) -> Handler:
        async def write(request: web.Request) -> web.StreamResponse:
            try:
                # No token (or an unknown one) is a 401 before the body or the names are
                # even looked at, as on the native routes; 403 comes once the service is known.
                if self.auth.principal(request, consul=True) is None:
                    self.auth.authorize(request, Right.WRITE, None, consul=True)
                self._check_query(request)
                return await handler(request)
            except DnsregError as exc:
                return self._error(exc)

        return write

    def _check_query(self, request: web.Request) -> None:
        dc = request.query.get("dc")
        if dc and dc != DATACENTER:
            raise InvalidInput(f"No path to datacenter {dc!r}: dnsreg is one node in {DATACENTER}")
        if "filter" in request.query:
            raise InvalidInput("?filter= expressions are not supported by dnsreg")

    @staticmethod
    def _error(exc: DnsregError) -> web.Response:
        status = next((s for t, s in STATUS_FOR_ERROR.items() if isinstance(exc, t)), 500)
        return _text(exc.message, status)

    def _authorize(self, request: web.Request, service: str) -> Principal:
        """The one authorisation call point of every Consul write: dnsreg's ``authorize``.

        Consul clients carry their token in ``X-Consul-Token`` or ``?token=``
        (agent/index.mdx, "Authentication"); ``Authorization: Bearer`` works too.
        Without an ACL file, writes are open only while the API listens on loopback.
        """
        return self.auth.authorize(request, Right.WRITE, service, consul=True)

    @staticmethod
    def _audit(request: web.Request, principal: Principal, action: str, what: str) -> None:
        audit.info("consul %s %s by token %s from %s", action, what, principal.name, request.remote)

    @staticmethod
    def _json(body: Any) -> web.Response:
        return web.Response(body=_encoder.encode(body), content_type="application/json")

    @staticmethod
    async def _raw(request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLarge(f"Request body too large: {exc.text}") from exc

    def _on_change(self, change: Change) -> None:
        if change.kind in (ChangeKind.HEALTH, ChangeKind.MAINTENANCE):
            return  # ids and checks stay as they are
        if change.before is not None:
            self._unindex(change.before)
        if change.after is not None:
            self._index(change.after)

    def _index(self, instance: Instance) -> None:
        reg = instance.reg
        self._services_of.setdefault(reg.id, set()).add(reg.service)
        for n, check in enumerate(reg.checks):
            self._check_at[check_id(instance, n, check)] = (reg.service, reg.id, n)

    def _unindex(self, instance: Instance) -> None:
        reg = instance.reg
        services = self._services_of.get(reg.id)
        if services is not None:
            services.discard(reg.service)
            if not services:
                del self._services_of[reg.id]
        for n, check in enumerate(reg.checks):
            if self._check_at.get(check_id(instance, n, check)) == (reg.service, reg.id, n):
                del self._check_at[check_id(instance, n, check)]

    def _find(self, instance_id: str) -> Instance:
        """The instance with Consul service ID ``instance_id`` (unique, as in Consul)."""
        found = [
            instance
            for service in sorted(self._services_of.get(instance_id, ()))
            if (instance := self.registry.get(service, instance_id)) is not None
        ]
        if not found:
            raise NotFound(
                f'Unknown service ID "{instance_id}". Ensure that the service ID is passed, '
                "not the service name."
            )
        if len(found) > 1:
            services = ", ".join(sorted(i.reg.service for i in found))
            raise Conflict(
                f"service ID {instance_id!r} is registered under several services ({services}) "
                "through dnsreg's native API; use that API for it"
            )
        return found[0]

    def _find_check(self, check_id: str) -> tuple[Instance, int]:
        at = self._check_at.get(check_id)
        if at is not None:
            instance = self.registry.get(at[0], at[1])
            if instance is not None and at[2] < len(instance.reg.checks):
                return instance, at[2]
        raise NotFound(
            f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
            "not the check name."
        )

    # ---------------------------------------------------------------- writes
    async def register(self, request: web.Request) -> web.Response:
        body: ConsulService = decode(await self._raw(request), ConsulService)
        reg = to_registration(body, request.remote, self.admission)
        principal = self._authorize(request, reg.service)
        # SPEC §7, the same rules as the native route: checks hit their own instance.
        tokens = self.auth.mode is AuthMode.TOKENS
        reg = await admit_checks(
            reg, any_host=may_check_any_host(self.admission, principal, tokens=tokens)
        )
        # Consul's service IDs are unique per agent: registering an ID under another
        # name moves it there, as re-registering does in Consul.
        moved = [
            old
            for service in sorted(self._services_of.get(reg.id, set()) - {reg.service})
            if (old := self.registry.get(service, reg.id)) is not None
        ]
        for old in moved:
            self._authorize(request, old.reg.service)
        actors, client = self.auth.actors, request.remote or "-"  # named in dnsreg.changes
        with actors.acting(reg.key, principal.name, client):
            await self.store.register(reg)
        for old in moved:
            with actors.acting(old.reg.key, principal.name, client):
                await self.store.deregister(old.reg.service, old.reg.id)
        self._audit(request, principal, "register", f"{reg.service}/{reg.id}")
        return _text("", 200)

    async def deregister(self, request: web.Request) -> web.Response:
        instance = self._find(request.match_info["id"])
        principal = self._authorize(request, instance.reg.service)
        with self.auth.actors.acting(instance.reg.key, principal.name, request.remote or "-"):
            await self.store.deregister(instance.reg.service, instance.reg.id)
        self._audit(request, principal, "deregister", f"{instance.reg.service}/{instance.reg.id}")
        return _text("", 200)

    async def maintenance(self, request: web.Request) -> web.Response:
        instance = self._find(request.match_info["id"])
        enable = request.query.get("enable")
        if enable is None:
            raise InvalidInput("Missing value for enable")
        if enable.lower() not in ("true", "false", "1", "0"):
            raise InvalidInput(f"Invalid value for enable: {enable!r}")
        reg = instance.reg
        principal = self._authorize(request, reg.service)
        reason = request.query.get("reason") or DEFAULT_MAINTENANCE_NOTE
        on = enable.lower() in ("true", "1")
        with self.auth.actors.acting(reg.key, principal.name, request.remote or "-"):
            await self.store.set_maintenance(reg.service, reg.id, reason if on else None)
        self._audit(
            request, principal, f"maintenance {'on' if on else 'off'}", f"{reg.service}/{reg.id}"
        )
        return _text("", 200)

    async def check_status(self, request: web.Request) -> web.Response:
        verb = request.path.split("/")[4]  # /v1/agent/check/<verb>/<id>
        health = {"pass": Health.PASSING, "warn": Health.WARNING, "fail": Health.CRITICAL}[verb]
        note = request.query.get("note", "")
        return await self._report(request, health, note)

    async def check_update(self, request: web.Request) -> web.Response:
        body: ConsulCheckUpdate = decode(await self._raw(request), ConsulCheckUpdate)
        return await self._report(request, STATUS_OF[body.status], body.output)

    async def _report(self, request: web.Request, health: Health, output: str) -> web.Response:
        check_id = request.match_info["check_id"]
        instance, index = self._find_check(check_id)
        if instance.reg.checks[index].kind != "ttl":
            raise InvalidInput(f'CheckID "{check_id}" does not have associated TTL')
        reg = instance.reg
        principal = self._authorize(request, reg.service)
        await self.report_ttl(reg.service, reg.id, index, health, output)
        self._audit(
            request, principal, f"check {health.value}", f"{reg.service}/{reg.id} {check_id}"
        )
        return _text("", 200)

    # ----------------------------------------------------------------- reads
    async def agent_services(self, request: web.Request) -> web.Response:
        out = {
            i.reg.id: self.views.agent_service(i) for i in _sorted(self.registry.all_instances())
        }
        return self._json(out)

    async def agent_service(self, request: web.Request) -> web.Response:
        return self._json(self.views.agent_service(self._find(request.match_info["id"])))

    async def agent_checks(self, request: web.Request) -> web.Response:
        out = {
            c["CheckID"]: c
            for i in _sorted(self.registry.all_instances())
            for c in self.views.checks(i)
        }
        return self._json(out)

    async def agent_self(self, request: web.Request) -> web.Response:
        port = _local_port(request)
        return self._json(
            {
                "Config": {
                    "Datacenter": DATACENTER,
                    "PrimaryDatacenter": DATACENTER,
                    "NodeName": self.views.node,
                    "NodeID": self.views.node_id,
                    "Server": True,
                    "Revision": "dnsreg",
                    "Version": __version__,
                },
                "Member": {
                    "Name": self.views.node,
                    "Addr": self.views.address,
                    "Port": port,
                    "Tags": {"dc": DATACENTER, "role": "consul", "id": self.views.node_id},
                    "Status": 1,  # serf: alive
                },
                "Meta": {},
            }
        )

    async def leader(self, request: web.Request) -> web.Response:
        return self._json(f"{self.views.address}:{_local_port(request)}")

    async def peers(self, request: web.Request) -> web.Response:
        return self._json([f"{self.views.address}:{_local_port(request)}"])

    async def datacenters(self, request: web.Request) -> web.Response:
        return self._json([DATACENTER])

    async def catalog_services(self, request: web.Request) -> web.Response:
        out: dict[str, list[str]] = {}
        for service in sorted(self.registry.services()):
            tags: dict[str, None] = {}
            for instance in _sorted(self.registry.instances(service).values()):
                tags.update(dict.fromkeys(instance.reg.tags))
            out[service] = list(tags)
        return self._json(out)

    async def catalog_service(self, request: web.Request) -> web.Response:
        node = self.views.node_json()
        out = []
        for i in self._pool(request):
            service = self.views.service(i)
            entry: dict[str, Any] = {
                "ID": node["ID"],
                "Node": node["Node"],
                "Address": node["Address"],
                "Datacenter": DATACENTER,
                "TaggedAddresses": node["TaggedAddresses"],
                "NodeMeta": node["Meta"],
                "ServiceKind": "",
                **{f"Service{k}": v for k, v in service.items() if k not in INDEXES},
                "CreateIndex": service["CreateIndex"],
                "ModifyIndex": service["ModifyIndex"],
            }
            out.append(entry)
        return self._json(out)

    async def health_service(self, request: web.Request) -> web.Response:
        passing = _flag(request, "passing")
        node = self.views.node_json()
        out = []
        for i in self._pool(request):
            checks = self.views.checks(i)
            if passing and any(c["Status"] != "passing" for c in checks):
                continue  # Consul's ?passing: every check passing (warning is not)
            out.append({"Node": node, "Service": self.views.service(i), "Checks": checks})
        return self._json(out)

    async def health_checks(self, request: web.Request) -> web.Response:
        return self._json([c for i in self._pool(request) for c in self.views.checks(i)])

    async def health_state(self, request: web.Request) -> web.Response:
        state = request.match_info["state"]
        if state not in ("any", "passing", "warning", "critical"):
            raise InvalidInput(f"Invalid state {state!r}: use any, passing, warning or critical")
        checks = [c for i in _sorted(self.registry.all_instances()) for c in self.views.checks(i)]
        return self._json([c for c in checks if state in ("any", c["Status"])])

    async def unsupported(self, request: web.Request) -> web.Response:
        what = next(v for k, v in UNSUPPORTED.items() if request.path.startswith(k))
        return _text(
            f"dnsreg does not implement {what} of Consul's API ({request.path}); "
            "it offers service registration, discovery and health only",
            404,
        )

    # ---------------------------------------------------------------- shapes
    def _pool(self, request: web.Request) -> list[Instance]:
        """Instances of the route's service, with every ``?tag=`` given (Consul ANDs them)."""
        service = request.match_info["service"].lower()
        tags = [t.lower() for t in request.query.getall("tag", [])]
        pool = (
            self.registry.tagged(service, tags)
            if tags
            else self.registry.instances(service).values()
        )
        return _sorted(pool)


def _sorted(instances: Iterable[Instance]) -> list[Instance]:
    return sorted(instances, key=lambda i: (i.reg.service, i.reg.id))


def _flag(request: web.Request, name: str) -> bool:
    """Consul's boolean query flags: ``?passing``, ``?passing=1``, ``?passing=true``."""
    if name not in request.query:
        return False
    return request.query[name].lower() not in ("0", "false")


def _local_port(request: web.Request) -> int:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else 0
