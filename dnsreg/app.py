"""The composition root: store → registry → DNS + HTTP, shut down in reverse.

Nothing else in dnsreg wires components together; tests start a real server
through :class:`Server` with port 0 and a temporary data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import random
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from dnsreg.config import Config
from dnsreg.core.acl import Right
from dnsreg.core.errors import ConfigError, ZoneError
from dnsreg.core.names import parse_name, to_text
from dnsreg.core.preservation import ExpiryGuard
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Settings, with_alt_domain
from dnsreg.dns.deferred import Deferrals
from dnsreg.dns.explain import explain, parse_question
from dnsreg.dns.journal_keeper import JournalKeeper
from dnsreg.dns.loop_lag import LoopLag, LoopLagCollector
from dnsreg.dns.material_cache import INLINE_BUILD
from dnsreg.dns.metrics import DnsGuardCollector, ResponderCollector
from dnsreg.dns.notify import Notifier, Secondary
from dnsreg.dns.responder import Responder
from dnsreg.dns.rrl import RateLimiter
from dnsreg.dns.server import DnsServer
from dnsreg.dns.transfer import Journal
from dnsreg.dns.tsig import Signer
from dnsreg.dns.updater import Updater
from dnsreg.dns.xfr_out import Transfers, parse_networks
from dnsreg.dns.zones import StaticZones, load_zones
from dnsreg.gc_tuning import GcCollector, GcTuning
from dnsreg.health.checker import Checker, PanicWatch
from dnsreg.health.metrics import HealthCollector
from dnsreg.http.accept import AcceptCollector, AcceptFailures, serve
from dnsreg.http.api import Api
from dnsreg.http.auth import Auth, AuthMode, decide_mode
from dnsreg.http.backup import BackupRoute
from dnsreg.http.change_log import ChangeLog
from dnsreg.http.consul import ConsulApi
from dnsreg.http.limits import (
    ConnectionLimiter,
    LimitedSite,
    connection_budget,
    raise_nofile_limit,
)
from dnsreg.http.metrics import Metrics
from dnsreg.http.observe import access, access_logger_class
from dnsreg.http.tls import reload_certificate, server_context
from dnsreg.store import EtcdOptions, Store, open_store
from dnsreg.store.datadir_lock import DataDirLock

log = logging.getLogger("dnsreg")


class Server:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.registry = Registry(panic_threshold=config.panic_threshold)
        self.store: Store | None = None
        self.checker: Checker | None = None
        self.panic_watch: PanicWatch | None = None
        self.static = StaticZones()
        self.responder: Responder | None = None
        self.updater: Updater | None = None
        self.deferrals: Deferrals | None = None
        self.journal_keeper: JournalKeeper | None = None
        self.dns: DnsServer | None = None
        self.loop_lag = LoopLag()
        self.gc = GcTuning()
        self.accept_failures = AcceptFailures()
        self.http_runner: web.AppRunner | None = None
        self.api: Api | None = None
        self.auth: Auth | None = None
        self.http_limiter: ConnectionLimiter | None = None
        self.notifier: Notifier | None = None
        self._zone_changed: Callable[[], None] | None = None
        self.dns_port = 0
        self.http_port = 0
        self.tls: ssl.SSLContext | None = None
        self._stopped = asyncio.Event()
        self.data_lock: DataDirLock | None = None

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        cfg = self.config
        origin = cfg.origin
        # 0. Who may write (SPEC §7): decided before anything opens, so a refusal is clean.
        self.auth = self._auth()
        # 0. TLS files are checked before anything starts: a bad one is a ConfigError.
        tls = self.tls = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        try:
            # 0. One server per data directory (refused before anything else is opened).
            self.data_lock = DataDirLock(cfg.data_dir)
            self.data_lock.acquire()
            # 1. The store fills the registry.
            self.store = open_store(
                cfg.store,
                data_dir=cfg.data_dir,
                registry=self.registry,
                clock=self.clock,
                etcd=_etcd_options(cfg),
            )
            self.store.stale_after = cfg.stale_after
            self.store.expiry_guard = ExpiryGuard(cfg.expiry_guard)
            await self.store.start()
            # What the store loaded lives as long as the process: out of the cyclic
            # GC's reach, a full collection no longer walks 100 000 instances (a
            # stall of 30-60 ms on the loop every DNS query waits on). Bursts of
            # changes later are frozen the same way (dnsreg.gc_tuning).
            self.gc.freeze("start-up load")
            self.gc.start()
            self.store.subscribe(self.gc.changed)
            # 1b. Health checks of what the store holds, and panic-mode logging.
            self.panic_watch = PanicWatch(self.registry)
            self.panic_watch.start(self.store)
            self.checker = Checker(
                self.store,
                concurrency=cfg.check_concurrency,
                per_address=cfg.checks_per_address,
                clock=self.clock,
            )
            await self.checker.start()
            # 2. Static zones, checked against what the store brought back.
            self.static = self._load_zones()
            self.registry.static_clash = lambda svc: self.static.clash_for_service(origin, svc)
            # 3. DNS.
            settings = Settings(
                origin=origin,
                ns_addresses=cfg.advertised_addresses(),
                negative_ttl=cfg.negative_ttl,
                max_answers=cfg.max_answers,
            )
            if cfg.alt_domain is not None:
                settings = with_alt_domain(settings, parse_name(cfg.alt_domain))
            self.responder = Responder(self.registry, self.static, settings)
            # A shared store cut off from its backend marks answers stale (RFC 8914).
            self.responder.stale = self.store.stale
            self.store.subscribe_stale(self._set_stale)
            self._start_transfers(settings)
            # DNS UPDATE (RFC 2136): TSIG-signed, written through the store like HTTP writes.
            self.updater = Updater(
                self.responder,
                self.store.apply,
                policy=cfg.admission,
                acting=self.auth.actors.acting,
            )
            self.responder.defer_updates = True
            # A large service's material is built in slices, not inline (dns/material_cache).
            self.responder.materials.budget = INLINE_BUILD
            # What queries keep is frozen in bulk like the rest: a memo entry is three
            # objects (entry, record, its data); a material's reference about a quarter
            # of one, for what a full collection spends walking it.
            materials = self.responder.materials
            self.gc.watch(lambda: materials.memo.held * 3 + materials.instances // 4)
            self.deferrals = Deferrals(self.responder, self.updater.handle, self.journal_keeper)
            self.dns = DnsServer(
                self.responder.respond,
                idle_timeout=cfg.tcp_idle_timeout,
                max_connections=cfg.tcp_max_connections,
                stream_handler=self.responder.respond_tcp,
                # Accepting in Python: a failed accept is counted and logged (http.accept).
                listen=functools.partial(serve, name="DNS", failures=self.accept_failures),
                deferred=self.deferrals,
                max_per_client=cfg.tcp_max_per_client,
                limiter=(
                    RateLimiter(cfg.rate_limit, cfg.rate_limit_slip)
                    if cfg.rate_limit is not None
                    else None
                ),
            )
            with _listening("DNS", "--dns", cfg.dns.host, cfg.dns.port):
                self.dns_port = await self.dns.start(cfg.dns.host, cfg.dns.port)
            # 4. HTTP.
            metrics = Metrics(self.registry, lambda: self.store)
            self.store.commit_observer = metrics.store_commit.observe
            metrics.add(ResponderCollector(lambda: self.responder))
            metrics.add(
                DnsGuardCollector(
                    lambda: self.dns.udp.limiter if self.dns else None,
                    lambda: self.dns.tcp if self.dns else None,
                )
            )
            self.loop_lag.start()
            metrics.add(LoopLagCollector(self.loop_lag))
            metrics.add(GcCollector(self.gc))
            metrics.add(AcceptCollector(self.accept_failures))
            metrics.add(HealthCollector(lambda: self.checker, lambda: self.panic_watch))
            api = Api(
                self.registry,
                self.store,
                metrics,
                max_body_bytes=cfg.max_body_bytes,
                describe=self.describe,
                auth=self.auth,
                events_buffer=cfg.events_buffer,
                events_keepalive=cfg.events_keepalive,
                explain=self.explain,
                body_timeout=cfg.http_body_timeout,
                admission=cfg.admission,
            )
            self.api = api
            # Consul's routes (SPEC §5) over the same registry, store and blocking layer.
            ConsulApi(
                self.registry,
                self.store,
                api.events,
                node=socket.gethostname().split(".")[0] or "dnsreg",
                address=str(cfg.advertised_addresses()[0]),
                report_ttl=self.checker.report_ttl,
                auth=self.auth,
                admission=cfg.admission,
            ).install(api.app.router)
            auth = self.auth
            self.store.subscribe(ChangeLog(auth.actors).on_change)
            BackupRoute(
                self.store,
                scratch=cfg.data_dir,
                authorize=lambda request: auth.authorize(request, Right.OPERATOR, None),
            ).add_to(api.app)
            # Descriptors: soft limit raised to hard; HTTP gets what the reserve leaves.
            soft, hard = raise_nofile_limit()
            budget = connection_budget(
                soft, hard, reserve=cfg.descriptor_reserve,
                dns_tcp=cfg.tcp_max_connections, http_max=cfg.http_max_connections,
            )  # fmt: skip
            log.info(
                "open-files limit %d (hard %d): HTTP connections at most %d, keeping %d "
                "for health checks and the store and %d for DNS over TCP",
                soft, hard, budget.http_connections, budget.reserve, budget.dns_tcp,
            )  # fmt: skip
            self.http_limiter = ConnectionLimiter(
                max_connections=budget.http_connections, header_timeout=cfg.http_header_timeout
            )
            api.app.middlewares.insert(0, self.http_limiter.middleware)
            self.http_runner = web.AppRunner(
                api.app, handle_signals=False, shutdown_timeout=2,
                keepalive_timeout=cfg.http_keepalive_timeout, access_log=access,
                access_log_class=access_logger_class(metrics.http, log_requests=cfg.access_log),
            )  # fmt: skip
            await self.http_runner.setup()
            site = LimitedSite(
                self.http_runner, cfg.http.host, cfg.http.port, self.http_limiter,
                failures=self.accept_failures, ssl_context=tls,
            )  # fmt: skip
            with _listening("HTTP", "--http", cfg.http.host, cfg.http.port):
                await site.start()
            self.http_port = int(self.http_runner.addresses[0][1])
        except BaseException:
            await self.stop()
            raise
        log.info(
            "dnsreg %s serving zone %s: DNS on %s:%d (udp+tcp), HTTP on %s://%s:%d%s, store %s",
            _version(),
            to_text(origin),
            cfg.dns.host,
            self.dns_port,
            "https" if tls else "http",
            cfg.http.host,
            self.http_port,
            " (client certificates required)" if cfg.tls_client_ca else "",
            self.store.kind,
        )

    async def stop(self) -> None:
        """Reverse order: HTTP, DNS, the health checker, then the store flushes and closes."""
        self.loop_lag.stop()
        self.gc.stop()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
            self.http_runner = None
        if self.dns is not None:
            await self.dns.close()
            if self.deferrals is not None:
                self.deferrals.close()
            if self.journal_keeper is not None:
                self.journal_keeper.close()
            self.dns = None
        if self.notifier is not None:
            await self.notifier.close()
            self.notifier = None
        if self.checker is not None:
            await self.checker.close()
            self.checker = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.data_lock is not None:
            self.data_lock.release()
            self.data_lock = None
        self._stopped.set()

    def _start_transfers(self, settings: Settings) -> None:
        """AXFR/IXFR out and NOTIFY (SPEC §2), when the config asks for them."""
        cfg = self.config
        responder, store = self.responder, self.store
        if responder is None or store is None:
            return
        responder.signer = Signer(cfg.tsig_keys, clock=self.clock)
        by_key = any(k.rights & {"transfer", "operator"} for k in cfg.tsig_keys)
        if not (cfg.allow_transfer or cfg.notify or by_key):
            return
        # Built by the catch-up task below, a slice per loop turn: a restored registry of
        # 100 000 instances would otherwise hold the start-up for seconds.
        journal = Journal(self.registry, settings, self.static, limit=cfg.ixfr_journal, build=False)
        allow = parse_networks(cfg.allow_transfer)
        responder.transfers = Transfers(
            journal, lambda: responder.static, allow, signer=responder.signer
        )
        if cfg.notify:
            secondaries = [Secondary(hp.host, hp.port) for hp in cfg.notify]
            key = next((k.dns_key() for k in cfg.tsig_keys if k.name == cfg.notify_key), None)
            self.notifier = Notifier(origin=cfg.origin, secondaries=secondaries, key=key,
                                     soa_text=lambda: journal.soa.rdata.text())  # fmt: skip
        keeper = self.journal_keeper = JournalKeeper(
            journal, lambda: responder.static, self.notifier
        )
        store.subscribe(keeper.changed)
        self._zone_changed = keeper.changed
        keeper.changed()  # the first snapshot
        responder.journal_busy = lambda: keeper.busy
        notifier = self.notifier
        if notifier is not None:
            notifier.start()

    def _set_stale(self, stale: bool) -> None:
        if self.responder is not None:
            self.responder.stale = stale

    def _auth(self) -> Auth:
        cfg = self.config
        mode = decide_mode(
            cfg.http.host, acl_file=cfg.acl_file, insecure_open_api=cfg.insecure_open_api
        )
        if mode is AuthMode.OPEN_INSECURE:
            log.warning(
                "no ACL file and --insecure-open-api: anyone who can reach the HTTP API on %s "
                "may register, deregister and redirect traffic",
                cfg.http.host,
            )
        auth = Auth(mode, acl_file=cfg.acl_file, reads_need_token=cfg.acl_reads == "token")
        if mode is AuthMode.TOKENS:
            log.info(
                "auth: %d token(s) from %s, reads %s",
                len(auth.acl.tokens), cfg.acl_file, cfg.acl_reads,
            )  # fmt: skip
        else:
            log.info("auth: %s (no ACL file)", mode.value)
        return auth

    def reload(self) -> None:
        """SIGHUP: zone files, the ACL file and the TLS certificate, each kept as it was
        if the new one is broken."""
        self.reload_zones()
        if self.auth is not None:
            self.auth.reload()
        self.reload_tls()

    def describe(self) -> dict[str, Any]:
        return {
            "auth": self.auth.mode.value if self.auth is not None else None,
            "zone": to_text(self.config.origin),
            "dns": {"host": self.config.dns.host, "port": self.dns_port},
            "static_zones": sorted(to_text(z) for z in self.static.zones),
            "http": {"connections": self.http_limiter.describe() if self.http_limiter else None},
            "self_preservation": (
                self.store.self_preservation() if self.store is not None else {"active": False}
            ),
        }

    def explain(self, name: str, qtype: str) -> dict[str, Any]:
        """``GET /v1/explain``: the pure explainer, fed what only the server holds."""
        question = parse_question(name, qtype)
        assert self.responder is not None
        assert self.api is not None
        # Removed instances live on only in the event log: how "lease expired" is known.
        history = self.api.events.log
        departed = [e.change for e in history.after(history.floor).events if e.change.after is None]
        return explain(
            question, self.registry, self.static, self.responder.settings, random.Random(),
            now=self.clock(), departed=departed,
        ).to_json()  # fmt: skip

    # ------------------------------------------------------------------ zones
    def _load_zones(self) -> StaticZones:
        zones = load_zones(self.config.zones, self.config.origin)
        for service in self.registry.services():
            clash = zones.clash_for_service(self.config.origin, service)
            if clash is not None:
                raise ZoneError(
                    f"static record {clash} clashes with registered service {service!r}"
                )
        return zones

    def reload_zones(self) -> bool:
        """SIGHUP: swap in the new zones, or keep the old ones and say why."""
        try:
            zones = self._load_zones()
        except ZoneError as exc:
            log.error("zone reload failed, still serving the previous zones: %s", exc.message)
            return False
        self.static = zones
        if self.responder is not None:
            self.responder.static = zones
        if self._zone_changed is not None:
            self._zone_changed()  # secondaries fetch the new static names
        log.info("zones reloaded: %s", ", ".join(sorted(to_text(z) for z in zones.zones)) or "none")
        return True

    def reload_tls(self) -> bool:
        """SIGHUP: a renewed certificate and key, or the old ones kept with the reason."""
        cert, key = self.config.tls_cert, self.config.tls_key
        if self.tls is None or cert is None or key is None:
            return False
        try:
            reload_certificate(self.tls, cert, key)
        except ConfigError as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc.message)
            return False
        log.info("TLS certificate reloaded from %s", cert)
        return True

    # ---------------------------------------------------------------- running
    async def serve_forever(self) -> None:
        """Start, then run until SIGTERM/SIGINT; SIGHUP reloads zones, tokens and certificate."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.stop()


def _etcd_options(cfg: Config) -> EtcdOptions | None:
    options = EtcdOptions(
        ca=cfg.etcd_ca,
        cert=cfg.etcd_cert,
        key=cfg.etcd_key,
        user=cfg.etcd_user,
        password=cfg.etcd_password,
    )
    return None if options == EtcdOptions() else options


def _version() -> str:
    from dnsreg import __version__

    return __version__


@contextlib.contextmanager
def _listening(what: str, flag: str, host: str, port: int) -> Iterator[None]:
    """A listener that cannot bind says which one, and what to do about it."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = f"{host}:{port} is already in use (another server there? choose {flag})"
        elif exc.errno == errno.EACCES:
            reason = (
                f"{host}:{port}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = f"{host} is not an address of this machine (check {flag})"
        else:
            reason = f"{host}:{port}: {exc.strerror or exc}"
        raise ConfigError(f"cannot listen for {what}: {reason}") from exc
