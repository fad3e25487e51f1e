"""The Python client: register with keepalive, list, watch, and resolve.

    async with Client("http://127.0.0.1:8500") as c:
        async with c.registration("web", port=8080, ttl="10s") as reg:
            async for event in c.watch(prefix="web"):
                ...

Everything goes through the HTTP API (SPEC §5) except :meth:`Client.resolve`,
which asks the DNS server the way any non-Python client would. Every failure
surfaces as a :class:`dnsreg.core.errors.DnsregError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from dnsreg.client.endpoint import NotDnsreg, api_url, not_dnsreg, refused, require_keys
from dnsreg.client.lease import TRANSIENT, Lease
from dnsreg.client.registration import InstanceSpec
from dnsreg.client.sse import SseParser
from dnsreg.client.tls import (
    auth_headers,
    client_context,
    default_token,
    disconnect_hint,
    tls_failure,
)
from dnsreg.core.changelog import JITTER_FRACTION, parse_wait
from dnsreg.core.errors import (
    Conflict,
    DnsregError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
    UnsupportedMediaType,
)

log = logging.getLogger("dnsreg.client")

DEFAULT_API = "http://127.0.0.1:8500"
DEFAULT_DNS = "127.0.0.1:8600"
DEFAULT_DOMAIN = "service.local"

# The inverse of dnsreg.http.api.STATUS_FOR_ERROR (a test keeps the two in step).
ERROR_FOR_STATUS: dict[int, type[DnsregError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: Unavailable,
}

WATCH_RETRY_MAX = 5.0


class Services(dict[str, dict[str, Any]]):
    """``GET /v1/services``: service name -> counts, plus the revision it was read at."""

    revision: int = 0


class Instances(list[dict[str, Any]]):
    """``GET /v1/services/{svc}``: the instances, plus the revision it was read at."""

    revision: int = 0
    panic: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """One change from ``/v1/events``.

    ``kind`` is registered, replaced, deregistered, expired, health or
    maintenance; ``instance`` is the new state (None once it has left). A
    ``reset`` event (no service, no instance) means the server no longer
    remembers what happened since the last revision seen: re-list.
    """

    kind: str
    revision: int
    service: str
    id: str
    instance: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Target:
    """One SRV answer with the addresses of its target."""

    host: str
    port: int
    priority: int
    weight: int
    addresses: tuple[str, ...]


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, or a bare host."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


class Client:
    """An async client of one dnsreg server."""

    def __init__(
        self,
        api: str = DEFAULT_API,
        *,
        dns: str = DEFAULT_DNS,
        domain: str = DEFAULT_DOMAIN,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        token: str | None = None,
    ) -> None:
        """``ca``: trust this CA (PEM) for an ``https://`` API; ``cert``/``key``: a client
        certificate; ``token``: sent as ``Authorization: Bearer`` (default ``DNSREG_TOKEN``).
        """
        # A bare host:port is accepted (http://, or https:// with a CA or certificate).
        self.api = api_url(api, tls=ca is not None or cert is not None)
        self._tls = client_context(ca, cert, key)  # bad files fail here, not at first call
        self._has_cert = cert is not None
        self._headers = auth_headers(token if token is not None else default_token())
        self.dns_host, self.dns_port = split_host_port(dns, 53)
        self.domain = domain.strip(".")
        self.timeout = timeout
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls: ssl.SSLContext | bool = self._tls if self._tls is not None else True
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls))
            self._own_session = True
        return self._session

    # --------------------------------------------------------------- plumbing
    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        limit: float | None = None,
    ) -> dict[str, Any]:
        url = self.api + path
        try:
            async with self.session.request(
                method,
                url,
                json=body,
                params=params,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=limit or self.timeout),
            ) as resp:
                text = await resp.text()
                status = resp.status
                content_type = resp.content_type
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            tls = tls_failure(self.api, exc)
            if tls is not None:
                raise tls from exc
            hint = disconnect_hint(self.api, exc, has_cert=self._has_cert)
            if hint is None:
                hint = refused(self.api, exc)
            if hint is not None:
                raise Unreachable(hint) from exc
            raise Unreachable(f"cannot reach {self.api}: {_describe(exc)}") from exc
        # Every dnsreg answer is JSON, and every error has "error": anything else
        # (an HTML page, a foreign 404) is some other server on that address.
        try:
            payload = json.loads(text) if text else {}
        except ValueError:
            raise not_dnsreg(self.api, method, path, status, content_type) from None
        if content_type != "application/json":
            raise not_dnsreg(self.api, method, path, status, content_type)
        if status >= 400:
            if not isinstance(payload, dict) or not isinstance(payload.get("error"), str):
                raise not_dnsreg(self.api, method, path, status, content_type)
            raise _api_error(status, payload)
        if not isinstance(payload, dict):
            raise ServerError(f"{method} {path}: expected a JSON object, got {text[:100]!r}")
        return payload

    # ----------------------------------------------------------------- writes
    def spec(
        self,
        service: str,
        id: str | None = None,
        *,
        port: int,
        meta: Mapping[str, str] | None = None,
        tags: Iterable[str] = (),
        checks: Iterable[Mapping[str, Any]] = (),
        **fields: Any,
    ) -> InstanceSpec:
        """An :class:`InstanceSpec`; the id defaults to ``<host>-<port>``."""
        return InstanceSpec.build(
            service,
            id,
            port=port,
            hostname=socket.gethostname(),
            meta=meta,
            tags=tags,
            checks=checks,
            **fields,
        )

    async def register(
        self, service: str | InstanceSpec, id: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Register or replace an instance; returns the server's answer.

        Fields are those of the API (port, address, proto, tags, meta, weight,
        priority, ttl, dns_ttl, checks); ``id`` defaults to ``<host>-<port>``.
        """
        spec = service if isinstance(service, InstanceSpec) else self.spec(service, id, **fields)
        return await self.register_spec(spec)

    async def register_spec(self, spec: InstanceSpec) -> dict[str, Any]:
        return await self._call("PUT", _instance_path(spec.service, spec.id), body=spec.body())

    async def heartbeat(self, service: str, id: str) -> dict[str, Any]:
        """Renew a lease; :class:`NotFound` when the server does not know the instance."""
        return await self._call("PUT", _instance_path(service, id) + "/heartbeat")

    async def deregister(self, service: str, id: str) -> dict[str, Any]:
        return await self._call("DELETE", _instance_path(service, id))

    async def maintenance(
        self, service: str, id: str, *, enable: bool, reason: str = ""
    ) -> dict[str, Any]:
        body = {"enable": enable, "reason": reason}
        return await self._call("PUT", _instance_path(service, id) + "/maintenance", body=body)

    async def drain(self, service: str, id: str, *, reason: str | None = None) -> dict[str, Any]:
        """Withdraw from DNS now (maintenance, reason "draining"); the answer's ``wait``
        is how long resolvers may still hand it out (:mod:`dnsreg.core.drain`)."""
        body = {"reason": reason} if reason else None
        payload = await self._call("PUT", _instance_path(service, id) + "/drain", body=body)
        require_keys(self.api, "drain", payload, "wait", "instance", "revision")
        return payload

    # ------------------------------------------------------------------ reads
    def _blocking(
        self, index: int | None, wait: float | str | None
    ) -> tuple[list[tuple[str, str]], float | None]:
        if index is None:
            return [], None
        params = [("index", str(index))]
        if wait is not None:
            params.append(("wait", str(wait)))
        held = parse_wait(None if wait is None else str(wait))
        return params, held * (1 + JITTER_FRACTION) + self.timeout

    async def services(
        self, prefix: str = "", *, index: int | None = None, wait: float | str | None = None
    ) -> Services:
        """Services (with counts by health) whose name starts with ``prefix``.

        With ``index``, a blocking query: the server holds the request until a
        change past that revision (or ``wait`` runs out).
        """
        params, limit = self._blocking(index, wait)
        if prefix:
            params.append(("prefix", prefix))
        payload = await self._call("GET", "/v1/services", params=params, limit=limit)
        require_keys(self.api, "/v1/services", payload, "services", "revision")
        out = Services(payload["services"])
        out.revision = int(payload["revision"])
        return out

    async def instances(
        self,
        service: str,
        *,
        passing: bool = False,
        tag: str | Iterable[str] | None = None,
        index: int | None = None,
        wait: float | str | None = None,
    ) -> Instances:
        """Instances of ``service``; ``passing`` keeps only those DNS serves."""
        params, limit = self._blocking(index, wait)
        if passing:
            params.append(("passing", "1"))
        tags = [tag] if isinstance(tag, str) else list(tag or ())
        params.extend(("tag", t) for t in tags)
        path = f"/v1/services/{quote(service, safe='')}"
        payload = await self._call("GET", path, params=params, limit=limit)
        require_keys(self.api, path, payload, "instances", "revision")
        out = Instances(payload["instances"])
        out.revision = int(payload["revision"])
        out.panic = bool(payload.get("panic", False))
        return out

    async def instance(self, service: str, id: str) -> dict[str, Any]:
        payload = await self._call("GET", _instance_path(service, id))
        instance: dict[str, Any] = payload["instance"]
        return instance

    async def status(self) -> dict[str, Any]:
        try:
            payload = await self._call("GET", "/v1/status")
        except NotFound as exc:  # every dnsreg server has /v1/status: the base URL is wrong
            raise NotDnsreg(
                f"not a dnsreg server at {self.api}: GET /v1/status answered HTTP 404 "
                f"({exc.message}); check --api"
            ) from exc
        require_keys(self.api, "/v1/status", payload, "status", "version", "revision")
        return payload

    async def explain(self, name: str, rtype: str = "A") -> dict[str, Any]:
        """What DNS answers ``name`` now, and why each instance is in it or not."""
        return await self._call("GET", "/v1/explain", params={"name": name, "type": rtype})

    # -------------------------------------------------------------- keepalive
    def registration(
        self,
        service: str | InstanceSpec,
        id: str | None = None,
        *,
        require_server: bool = True,
        **fields: Any,
    ) -> Lease:
        """An async context manager that keeps an instance registered while it is open.

        It registers on entry, heartbeats at a third of the lease, registers
        again when the server lost the instance (404 on heartbeat) or could not
        be reached for a while (it may have restarted), and deregisters on exit,
        cancellation included. With ``require_server=False`` an unreachable
        server on entry is not an error: the lease keeper keeps trying.
        """
        if isinstance(service, InstanceSpec):
            spec = service
        else:
            fields.setdefault("ttl", "10s")
            spec = self.spec(service, id, **fields)
        return Lease(self, spec, require_server=require_server)

    # ------------------------------------------------------------------ watch
    async def watch(
        self,
        prefix: str = "",
        *,
        since: int | None = None,
        read_timeout: float = 60.0,
        on_state: Callable[[str], None] | None = None,
    ) -> AsyncIterator[Event]:
        """Every change under ``prefix``, in revision order, forever.

        Reconnects after errors and resumes from the last revision seen, so no
        change is lost or repeated; when the server can no longer tell what was
        missed it yields a ``reset`` event (re-list, then carry on). Without
        ``since`` it starts from the server's current revision. ``on_state`` hears
        one line when the stream is lost (and how long until the next try) and one
        when it is back (``dnsreg watch`` prints them to stderr).
        """
        cursor = since
        failures = 0
        lost = False

        def say(line: str) -> None:
            log.info("%s", line)
            if on_state is not None:
                on_state(line)

        url = self.api + "/v1/events"
        # The server writes a keepalive every 15 s (by default); silence for much
        # longer than that means the connection died without a FIN.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=read_timeout
        )
        while True:
            params = {"prefix": prefix} if prefix else {}
            if cursor is not None:
                params["since"] = str(cursor)
            try:
                async with self.session.get(
                    url, params=params, headers=self._headers, timeout=timeout
                ) as resp:
                    if resp.status != 200:
                        payload = await _json_or_text(resp)
                        error = _api_error(resp.status, payload)
                        if not isinstance(error, TRANSIENT):
                            raise error
                        raise _Retry(error.message)
                    if lost:
                        after = "" if cursor is None else f"; resuming after revision {cursor}"
                        say(f"reconnected to {self.api}{after}")
                        lost = False
                    parser = SseParser()
                    async for raw in resp.content:
                        message = parser.feed_line(raw.decode())
                        if message is None:
                            continue
                        failures = 0
                        revision = int(message.last_id) if message.last_id.isdigit() else None
                        if message.data is None:
                            if revision is not None:
                                cursor = revision  # idle frame: the server moved us along
                            continue
                        if message.event == "reset":
                            cursor = revision
                            yield Event("reset", revision or 0, "", "", None)
                            continue
                        # Already delivered (never expected; cheap to guard). Equal is
                        # not a repeat: a shared store may apply several changes at
                        # one revision (see ChangeLog.append).
                        if revision is not None and cursor is not None and revision < cursor:
                            continue
                        data = json.loads(message.data)
                        cursor = revision
                        yield Event(
                            kind=message.event,
                            revision=int(data["revision"]),
                            service=data["service"],
                            id=data["id"],
                            instance=data.get("instance"),
                        )
                reason = "the server ended the stream"
            except (aiohttp.ClientError, TimeoutError, OSError, _Retry) as exc:
                tls = tls_failure(self.api, exc)
                if tls is not None:
                    raise tls from exc  # reconnecting cannot fix a certificate
                reason = refused(self.api, exc) or f"{self.api}: {_describe(exc)}"
            failures += 1
            delay = min(WATCH_RETRY_MAX, 0.1 * 2 ** min(failures, 10))
            if not lost or failures % 10 == 0:  # once, then now and then while it lasts
                say(f"disconnected: {reason}; reconnecting (next try in {delay:.1f}s)")
            lost = True
            await asyncio.sleep(delay)

    # -------------------------------------------------------------------- DNS
    async def resolve(self, service: str, *, tag: str | None = None) -> list[Target]:
        """SRV targets of ``service`` (optionally only those with ``tag``), with addresses.

        Asks the DNS server (``dns=`` of the client), not the HTTP API: only
        served instances come back, in the server's weighted order, sorted by
        priority (RFC 2782). An unknown service gives an empty list.
        """
        import dns.asyncresolver
        import dns.exception
        import dns.rdatatype
        import dns.resolver

        name = ".".join(p for p in (tag, service, self.domain) if p)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.dns_host]
        resolver.port = self.dns_port
        resolver.lifetime = self.timeout
        try:
            answer = await resolver.resolve(name, "SRV", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise Unreachable(f"DNS server {self.dns_host}:{self.dns_port}: {exc}") from exc
        glue: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name.to_text(), []).extend(r.address for r in rrset)
        targets = []
        for rr in answer.rrset or ():
            host = rr.target.to_text()
            addresses = glue.get(host)
            if addresses is None:
                addresses = []
                for rdtype in ("A", "AAAA"):
                    with contextlib.suppress(dns.resolver.NXDOMAIN):
                        extra = await resolver.resolve(host, rdtype, raise_on_no_answer=False)
                        addresses.extend(r.address for r in extra.rrset or ())
            targets.append(
                Target(host.rstrip("."), rr.port, rr.priority, rr.weight, tuple(addresses))
            )
        # Stable sort: the server's weighted shuffle survives within a priority.
        targets.sort(key=lambda t: t.priority)
        return targets


class _Retry(Exception):
    """A transient HTTP error on the event stream: reconnect."""


def _instance_path(service: str, id: str) -> str:
    return f"/v1/services/{quote(service, safe='')}/instances/{quote(id, safe='')}"


def _api_error(status: int, payload: Any) -> DnsregError:
    message = f"HTTP {status}"
    field = None
    detail = None
    if isinstance(payload, dict):
        message = str(payload.get("error", message))
        detail = payload.get("detail")
        if isinstance(detail, dict):
            field = detail.get("field")
    kind = ERROR_FOR_STATUS.get(status, ServerError if status >= 500 else DnsregError)
    return kind(message, field=field, detail=detail)


async def _json_or_text(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        return json.loads(text)
    except ValueError:
        return {"error": text.strip()[:200] or f"HTTP {resp.status}"}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
