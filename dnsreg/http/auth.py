"""The HTTP side of authorisation: who is asking, and the ACL-less safe default.

Reads the token (``Authorization: Bearer …``; on Consul routes also ``X-Consul-Token``
and ``?token=``), asks :func:`dnsreg.core.acl.authorize`, logs accepted writes at INFO
and refusals at WARNING (rate-limited). Without an ACL file writes are open only while
the API listens on loopback (SPEC §7); ``--insecure-open-api`` opens them elsewhere.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

from aiohttp import web

from dnsreg.core.acl import Acl, Principal, Right, authorize, load_acl
from dnsreg.core.errors import ConfigError, DnsregError, Forbidden, Unauthorized
from dnsreg.core.names import check_label
from dnsreg.core.rate_limit import LogBudget
from dnsreg.http.change_log import Actors

log = logging.getLogger("dnsreg.http")
audit = logging.getLogger("dnsreg.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The Consul-compatible routes (SPEC §5) also take X-Consul-Token and ?token=, as Consul does.
CONSUL_PREFIXES = ("/v1/agent/", "/v1/catalog/", "/v1/health/", "/v1/status/")


class AuthMode(StrEnum):
    TOKENS = "tokens"
    OPEN_LOOPBACK = "open-loopback"
    OPEN_INSECURE = "open-insecure"


# Who a request acts as without an ACL file. On loopback only this machine's users can
# reach the API, and they can reach anything a check could, so they act as operator.
# Opened to the network by --insecure-open-api, anyone may write but not as operator.
LOOPBACK = Principal("loopback", frozenset({Right.OPERATOR}))
INSECURE = Principal("anonymous", frozenset({Right.WRITE, Right.READ, Right.TRANSFER}))

HOW_TO_CREATE_TOKENS = (
    "create tokens with `dnsreg acl add NAME --services 'GLOB' --file acl.toml` and start "
    "with --acl-file acl.toml (or listen on 127.0.0.1, or pass --insecure-open-api to let "
    "anyone who can reach it write)"
)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: not loopback


def decide_mode(http_host: str, *, acl_file: Path | None, insecure_open_api: bool) -> AuthMode:
    """SPEC §7's safe default; raises ConfigError when the server must not start."""
    if acl_file is not None:
        return AuthMode.TOKENS
    if is_loopback(http_host):
        return AuthMode.OPEN_LOOPBACK
    if insecure_open_api:
        return AuthMode.OPEN_INSECURE
    raise ConfigError(
        f"refusing to serve the HTTP API on {http_host} without an ACL file: anyone who "
        f"can reach it could redirect traffic; {HOW_TO_CREATE_TOKENS}"
    )


class Auth:
    def __init__(
        self,
        mode: AuthMode,
        *,
        acl_file: Path | None = None,
        reads_need_token: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode is AuthMode.TOKENS and acl_file is None:
            raise ConfigError("token mode needs an acl_file")
        if reads_need_token and mode is not AuthMode.TOKENS:
            raise ConfigError('acl_reads = "token" needs an acl_file that holds the tokens')
        self.mode = mode
        self.acl_file = acl_file
        self.reads_need_token = reads_need_token
        self.clock = clock
        self.refusals = LogBudget(burst=10, per=60.0)
        # Who each write in flight acts for: the change log (dnsreg.changes) names them.
        self.actors = Actors()
        # At start a broken file is a ConfigError; on SIGHUP it keeps the previous tokens.
        self.acl = load_acl(acl_file) if acl_file is not None else Acl()

    def reload(self) -> bool:
        """SIGHUP: swap in the file's tokens, or keep the previous ones and say why."""
        if self.acl_file is None:
            return True
        try:
            acl = load_acl(self.acl_file)
        except ConfigError as exc:
            log.error("acl reload failed, still using the previous tokens: %s", exc.message)
            return False
        self.acl = acl
        log.info("acl reloaded from %s: %d token(s)", self.acl_file, len(acl.tokens))
        return True

    # ----------------------------------------------------------- who is asking
    def principal(self, request: web.Request, *, consul: bool = False) -> Principal | None:
        """The token's principal; None when no token or an unknown one was sent.

        Handlers behind :meth:`write` may ask it again, e.g. ``.is_operator`` for
        health checks aimed at other hosts (SPEC §7).
        """
        if self.mode is AuthMode.OPEN_LOOPBACK:
            return LOOPBACK
        if self.mode is AuthMode.OPEN_INSECURE:
            return INSECURE
        secret = _secret(request, consul=consul)
        return None if secret is None else self.acl.lookup(secret)

    def authorize(
        self, request: web.Request, right: Right, service: str | None, *, consul: bool = False
    ) -> Principal:
        """Every HTTP write (and closed read) goes through here before anything changes."""
        principal = self.principal(request, consul=consul)
        presented = principal is None and _secret(request, consul=consul) is not None
        try:
            authorize(principal, right, service, presented=presented)
        except (Unauthorized, Forbidden) as exc:
            self._log_refusal(request, exc)
            raise
        assert principal is not None
        return principal

    def _log_refusal(self, request: web.Request, exc: DnsregError) -> None:
        allowed, held = self.refusals.allow(self.clock())
        if not allowed:
            return
        more = f" ({held} more refusals not logged)" if held else ""
        audit.warning(
            "refused %s %s from %s: %s%s", request.method, request.path, request.remote,
            exc.message, more,
        )  # fmt: skip

    # ----------------------------------------------------------------- routes
    def write(self, action: str, handler: Handler) -> Handler:
        """Wrap a native write route: 401 first, then the names, then 403, then the write."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.principal(request) is None:
                self.authorize(request, Right.WRITE, None)  # raises Unauthorized, logged
            service = check_label(request.match_info["service"], field="service")
            instance = check_label(request.match_info["id"], field="id")
            principal = self.authorize(request, Right.WRITE, service)
            client = request.remote or "-"
            with self.actors.acting((service, instance), principal.name, client):
                response = await handler(request)
            # A heartbeat changes nothing and comes every few seconds per instance:
            # at INFO it would drown the lines that matter.
            audit.log(
                logging.DEBUG if action == "heartbeat" else logging.INFO,
                "%s %s/%s by token %s from %s", action, service, instance, principal.name, client,
                extra={"token": principal.name, "client": client, "action": action},
            )  # fmt: skip
            return response

        return guarded

    @web.middleware
    async def reads_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """``acl_reads = "token"``: every GET needs read (write and operator imply it)."""
        if self.reads_need_token and request.method in ("GET", "HEAD") and not _public(request):
            service = request.match_info.get("service")
            consul = request.path.startswith(CONSUL_PREFIXES)
            self.authorize(request, Right.READ, service.lower() if service else None, consul=consul)
        return await handler(request)


def _public(request: web.Request) -> bool:
    """The dashboard's own files hold no data: a browser must load them to ask for a token."""
    path = request.path
    return path in ("/", "/ui") or path.startswith("/ui/")


def _secret(request: web.Request, *, consul: bool) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, secret = header.strip().partition(" ")
        if scheme.lower() == "bearer" and secret.strip():
            return secret.strip()
        return None
    if consul:
        token = request.headers.get("X-Consul-Token") or request.query.get("token")
        return token or None
    return None
