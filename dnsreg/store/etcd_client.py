"""A small client for etcd's v3 JSON gateway (``/v3/...``), on aiohttp.

Why not a library: the Python etcd clients measured for this project either
break with current protobuf (``etcd3``), mis-handle prefixes and keepalives
(``etcetra``), or bind to one endpoint with no timeouts (``aetcd``). etcd
serves every v3 RPC as JSON over HTTP (grpc-gateway), so aiohttp is enough.

What this client guarantees:

- every call has a timeout (connect and whole-request), so a dead or
  black-holed member costs a bounded delay, never a hang;
- calls fail over across the endpoints, starting with the last one that
  worked, and retry while an election is in progress, within a budget;
- a call that may have been applied although it failed (timeout, dropped
  connection after sending, "request timed out") raises :class:`Ambiguous`
  when the caller said the call is not idempotent, so the caller can check
  before retrying (etcd's own advice for writes);
- a watch is bound to one endpoint and says so when it ends; resuming it
  (at the last seen revision + 1) is the caller's job, as only the caller
  knows what it has applied.

Gateway quirks handled here: keys and values are base64 (see the codec),
64-bit integers arrive as strings, fields holding default values are
omitted, and a streamed watch sends one JSON object per line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from dnsreg.store.etcd_auth import (
    PERMISSION_DENIED,
    auth_message,
    needs_auth,
    strip,
    tls_alert,
    tls_reason,
    token_rejected,
)
from dnsreg.store.etcd_codec import Event, KeyValue, b64

log = logging.getLogger("dnsreg.etcd")

# gRPC status codes the gateway passes through (google.golang.org/grpc/codes).
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
OUT_OF_RANGE = 11  # "mvcc: required revision has been compacted"
UNAVAILABLE = 14
# UNAVAILABLE errors that say the request was refused before it was proposed:
# a retry elsewhere cannot duplicate it.
_NOT_PROPOSED = ("no leader", "not capable", "too many requests", "server stopped")


class EtcdError(Exception):
    """etcd answered with an error (``code`` is the gRPC status code, 0 if unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class EtcdRefused(EtcdError):
    """etcd will not let us in: bad credentials, no permission, or a TLS failure.

    Retrying cannot help until the settings change, so the store reports it at
    once (a :class:`~dnsreg.core.errors.ConfigError` at start). The message
    never holds the password or the token.
    """


class EtcdTlsFailed(EtcdRefused):
    """The TLS handshake with etcd failed (untrusted certificate, client certificate refused)."""


class EtcdUnavailable(EtcdError):
    """No endpoint could carry out the call within its budget."""


class Ambiguous(EtcdUnavailable):
    """The call failed in a way that leaves open whether etcd applied it."""


class Compacted(EtcdError):
    """A watch asked for history etcd has compacted away: list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})", OUT_OF_RANGE)
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int
    kvs: list[KeyValue]
    more: bool


@dataclass(frozen=True, slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    responses: list[dict[str, Any]]

    def range_kvs(self, index: int) -> list[KeyValue]:
        """The kvs of the ``index``-th response when it is a range."""
        body = self.responses[index].get("response_range", {})
        return [KeyValue.from_json(kv) for kv in body.get("kvs", [])]


@dataclass(frozen=True, slots=True)
class WatchMessage:
    """One message of a watch stream: ``created`` (first), or events (maybe none)."""

    revision: int  # etcd's revision when it sent this (header)
    created: bool
    events: list[Event]


class _Retry(Exception):
    """Internal: this attempt failed; ``ambiguous`` says whether it may have applied."""

    def __init__(self, reason: str, *, ambiguous: bool, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ambiguous = ambiguous
        self.refused = refused


class EtcdClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        connect_timeout: float = 0.5,
        request_timeout: float = 2.0,
        budget: float = 5.0,
        on_contact: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.tls = tls
        self.credentials = credentials  # (user, password) for etcd's auth; None: none
        self._token: str | None = None  # from /v3/auth/authenticate; a secret, never logged
        self._auth_lock = asyncio.Lock()
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.budget = budget
        self.on_contact = on_contact
        self.preferred = 0  # index of the endpoint that worked last
        self._session: aiohttp.ClientSession | None = None

    @property
    def current(self) -> str:
        return self.endpoints[self.preferred]

    def rotate(self, away_from: str | None = None) -> str:
        """Prefer the next endpoint (after a failure of ``away_from``, if it is still current)."""
        if away_from is None or self.endpoints[self.preferred] == away_from:
            self.preferred = (self.preferred + 1) % len(self.endpoints)
        return self.current

    async def start(self) -> None:
        if self._session is None:
            # No total timeout here: unary calls set their own, a watch has none.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
                connector=aiohttp.TCPConnector(
                    limit=64, enable_cleanup_closed=True, ssl=self.tls if self.tls else True
                ),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ unary
    async def call_once(
        self, endpoint: str, path: str, body: Mapping[str, Any], *, within: float | None = None
    ) -> dict[str, Any]:
        """One attempt on one endpoint. Raises EtcdError, or _Retry for a failover case.

        With credentials, a token rejected as invalid (expired, or etcd restarted
        and forgot it) is replaced by a fresh one and the request sent once more:
        etcd checks the token before it proposes a request, so the first
        attempt cannot have been applied.
        """
        token = await self._ensure_token(endpoint, within)
        try:
            return await self._post(endpoint, path, body, within=within, token=token)
        except EtcdError as exc:
            # "Token" "" means etcd had auth off when we logged in; it may be on now.
            stale = token_rejected(exc.code, exc.message) or (
                token == "" and needs_auth(exc.message)
            )
            if self.credentials is None or not stale:
                raise
        log.info("etcd: auth token no longer valid at %s; authenticating again", endpoint)
        self._drop_token(token)
        token = await self._ensure_token(endpoint, within)
        return await self._post(endpoint, path, body, within=within, token=token)

    async def _post(
        self,
        endpoint: str,
        path: str,
        body: Mapping[str, Any],
        *,
        within: float | None,
        token: str | None,
    ) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise EtcdUnavailable("the etcd client is closed")
        limit = aiohttp.ClientTimeout(
            total=within or self.request_timeout, connect=self.connect_timeout
        )
        # etcd's grpc-gateway hands the Authorization header to the server as the
        # "authorization" metadata, where etcd looks for the token.
        headers = {"Authorization": token} if token else None
        try:
            async with session.post(
                endpoint + path, json=body, headers=headers, timeout=limit
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientSSLError as exc:
            raise EtcdTlsFailed(f"etcd at {endpoint}: TLS failed: {tls_reason(exc)}") from None
        except aiohttp.ClientConnectorError as exc:
            # Never reached the server: the request was not sent.
            reason = f"{endpoint}: {exc.os_error or exc}"
            raise _Retry(reason, ambiguous=False, refused=True) from None
        except TimeoutError as exc:
            raise _Retry(f"{endpoint}: no answer in time", ambiguous=True) from exc
        except aiohttp.ClientError as exc:
            if tls_alert(exc):
                raise EtcdTlsFailed(f"etcd at {endpoint}: TLS failed: {tls_reason(exc)}") from None
            raise _Retry(f"{endpoint}: {exc}", ambiguous=True) from exc
        try:
            data: dict[str, Any] = json.loads(raw) if raw else {}
        except ValueError:
            reason = f"{endpoint}: HTTP {status} with a body that is not JSON"
            raise _Retry(reason, ambiguous=True) from None
        if status == 200 and "error" not in data:
            if self.on_contact is not None:
                self.on_contact()
            return data
        message = str(data.get("message") or data.get("error") or f"HTTP {status}")
        code = int(data.get("code", 0) or 0)
        if code in (UNAVAILABLE, DEADLINE_EXCEEDED) or (status >= 500 and code == 0):
            not_proposed = any(text in message for text in _NOT_PROPOSED)
            raise _Retry(f"{endpoint}: {message}", ambiguous=not not_proposed)
        if self.on_contact is not None:
            self.on_contact()  # the member answered: it is reachable, just unhappy
        if code == PERMISSION_DENIED or needs_auth(message):
            raise EtcdRefused(auth_message(message, code, self.credentials), code)
        raise EtcdError(message, code)

    # ------------------------------------------------------------------- auth
    async def _ensure_token(self, endpoint: str, within: float | None) -> str | None:
        """The current auth token, authenticating first if there is none (one at a time)."""
        if self.credentials is None:
            return None
        if self._token is not None:
            return self._token
        async with self._auth_lock:
            if self._token is None:
                self._token = await self._authenticate(endpoint, within)
            return self._token

    def _drop_token(self, token: str | None) -> None:
        if self._token == token:  # not one another call already renewed
            self._token = None

    async def _authenticate(self, endpoint: str, within: float | None) -> str:
        """``POST /v3/auth/authenticate`` → a token (etcd's Auth.Authenticate RPC)."""
        assert self.credentials is not None
        user, password = self.credentials
        try:
            data = await self._post(
                endpoint,
                "/v3/auth/authenticate",
                {"name": user, "password": password},
                within=within,
                token=None,
            )
        except EtcdTlsFailed:
            raise
        except EtcdError as exc:
            if "authentication is not enabled" in exc.message:
                # Nothing to log in to: carry on without a token (etcd ignores none).
                log.warning("etcd: etcd_user %r is set but etcd has authentication off", user)
                return ""
            raise EtcdRefused(
                f"etcd refused user {user!r}: {strip(exc.message)}", exc.code
            ) from None
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdRefused(f"etcd accepted user {user!r} but sent no token")
        log.info("etcd: authenticated as %r", user)
        return token

    async def call(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        idempotent: bool = True,
        budget: float | None = None,
    ) -> dict[str, Any]:
        """Call ``path`` on the preferred endpoint, failing over to the others.

        Retries until ``budget`` seconds have passed. When every endpoint refused
        the connection in one round, etcd is down: give up at once rather than
        spin out the budget. A non-idempotent call raises :class:`Ambiguous` on
        the first failure that may have been applied.
        """
        deadline = time.monotonic() + (self.budget if budget is None else budget)
        backoff = 0.05
        last = "no attempt made"
        while True:
            refused = 0
            for _ in range(len(self.endpoints)):
                endpoint = self.current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EtcdUnavailable(f"etcd did not answer in time; last error: {last}")
                try:
                    return await self.call_once(
                        endpoint, path, body, within=min(self.request_timeout, remaining)
                    )
                except _Retry as retry:
                    last = retry.reason
                    refused += retry.refused
                    if retry.ambiguous and not idempotent:
                        self.rotate(endpoint)
                        raise Ambiguous(retry.reason) from None
                    self.rotate(endpoint)
            if refused == len(self.endpoints):
                raise EtcdUnavailable(f"every etcd endpoint refused the connection ({last})")
            if time.monotonic() + backoff >= deadline:
                raise EtcdUnavailable(f"etcd did not answer in time; last error: {last}")
            await asyncio.sleep(backoff)  # an election is in progress: give it a moment
            backoff = min(backoff * 2, 0.5)

    # -------------------------------------------------------------- kv helpers
    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        budget: float | None = None,
    ) -> RangeResult:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = revision
        if limit:
            body["limit"] = limit
        data = await self.call("/v3/kv/range", body, budget=budget)
        return RangeResult(
            revision=int(data["header"]["revision"]),
            kvs=[KeyValue.from_json(kv) for kv in data.get("kvs", [])],
            more=bool(data.get("more", False)),
        )

    async def range_all(
        self, key: bytes, range_end: bytes, *, page: int = 2000, budget: float | None = None
    ) -> RangeResult:
        """Every key in [key, range_end), read in pages pinned to one revision."""
        first = await self.range(key, range_end, limit=page, budget=budget)
        kvs = list(first.kvs)
        more = first.more
        while more and kvs:
            nxt = await self.range(
                kvs[-1].key + b"\0", range_end, revision=first.revision, limit=page, budget=budget
            )
            kvs.extend(nxt.kvs)
            more = nxt.more
        return RangeResult(first.revision, kvs, False)

    async def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
        *,
        idempotent: bool = False,
        budget: float | None = None,
    ) -> TxnResult:
        body = {"compare": compare, "success": success, "failure": failure or []}
        data = await self.call("/v3/kv/txn", body, idempotent=idempotent, budget=budget)
        return TxnResult(
            revision=int(data["header"]["revision"]),
            succeeded=bool(data.get("succeeded", False)),
            responses=list(data.get("responses", [])),
        )

    async def grant(self, ttl: int, *, budget: float | None = None) -> tuple[int, int]:
        """A new lease: (id, granted TTL). etcd raises a TTL below its minimum."""
        data = await self.call("/v3/lease/grant", {"TTL": ttl}, budget=budget)
        if data.get("error"):
            raise EtcdError(str(data["error"]))
        return int(data["ID"]), int(data.get("TTL", ttl))

    async def keepalive(self, lease: int, *, budget: float | None = None) -> int:
        """Renew a lease once; returns its TTL, 0 when the lease no longer exists."""
        data = await self.call("/v3/lease/keepalive", {"ID": lease}, budget=budget)
        return _keepalive_ttl(data)

    async def keepalive_on(self, endpoint: str, lease: int, *, within: float) -> int:
        """One keepalive on one endpoint: the session's liveness probe of that member."""
        try:
            data = await self.call_once(
                endpoint, "/v3/lease/keepalive", {"ID": lease}, within=within
            )
        except _Retry as retry:
            raise EtcdUnavailable(retry.reason) from None
        return _keepalive_ttl(data)

    async def revoke(self, lease: int, *, budget: float | None = None) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": lease}, budget=budget)
        except EtcdError as exc:
            if exc.code != NOT_FOUND:  # already gone: that is what we wanted
                raise

    # ------------------------------------------------------------------ watch
    async def watch(
        self, endpoint: str, key: bytes, range_end: bytes, start_revision: int
    ) -> AsyncIterator[WatchMessage]:
        """Stream the changes in [key, range_end) from ``start_revision`` on ``endpoint``.

        Ends by raising: :class:`Compacted` when the start is compacted away,
        :class:`EtcdUnavailable` when the stream breaks. Never returns normally.
        """
        session = self._session
        if session is None:
            raise EtcdUnavailable("the etcd client is closed")
        body = {
            "create_request": {
                "key": b64(key),
                "range_end": b64(range_end),
                "start_revision": start_revision,
            }
        }
        # grpc-gateway turns Grpc-Metadata-* headers into gRPC metadata; etcd's
        # "hasleader" makes a member that loses its leader cancel the watch
        # instead of going quiet while the cluster moves on without it.
        headers = {"Grpc-Metadata-hasleader": "true"}
        try:
            token = await self._ensure_token(endpoint, None)
        except _Retry as retry:
            raise EtcdUnavailable(retry.reason) from None
        if token:
            headers["Authorization"] = token
        limit = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout, sock_read=None)
        try:
            async with session.post(
                endpoint + "/v3/watch", json=body, headers=headers, timeout=limit
            ) as resp:
                if resp.status != 200:
                    text = (await resp.read())[:200].decode(errors="replace")
                    raise EtcdUnavailable(f"{endpoint}: watch refused: HTTP {resp.status} {text}")
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    # One JSON object per line; a large batch may span many chunks.
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield self._watch_message(endpoint, line)
        except aiohttp.ClientError as exc:
            raise EtcdUnavailable(f"{endpoint}: watch broke: {exc}") from exc
        except TimeoutError as exc:
            raise EtcdUnavailable(f"{endpoint}: watch could not connect in time") from exc
        raise EtcdUnavailable(f"{endpoint}: watch stream ended")

    def _watch_message(self, endpoint: str, line: bytes) -> WatchMessage:
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise EtcdUnavailable(f"{endpoint}: watch sent something that is not JSON") from exc
        if "error" in data:
            error = data["error"]
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            if "invalid auth token" in message:
                self._token = None  # the next call (and the resumed watch) logs in again
            raise EtcdUnavailable(f"{endpoint}: watch error: {message}")
        result = data.get("result", {})
        if result.get("compact_revision") and result.get("canceled"):
            raise Compacted(int(result["compact_revision"]))
        if result.get("canceled"):
            reason = result.get("cancel_reason") or "canceled by the server"
            raise EtcdUnavailable(f"{endpoint}: watch canceled: {reason}")
        if self.on_contact is not None:
            self.on_contact()
        return WatchMessage(
            revision=int(result.get("header", {}).get("revision", 0)),
            created=bool(result.get("created", False)),
            events=[Event.from_json(e) for e in result.get("events", [])],
        )


def _keepalive_ttl(data: Mapping[str, Any]) -> int:
    # The gateway wraps the streamed reply in "result"; a lease that is gone
    # comes back with no TTL field (the default, 0, is omitted).
    result = data.get("result", data)
    return int(result.get("TTL", 0))
