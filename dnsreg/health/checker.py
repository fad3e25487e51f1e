"""The health checker: runs every registered check and records what it finds. I/O shell.

One task per check sleeps until its next run on a fixed per-check grid
(``health_rules.next_run``), probes the target under a semaphore that bounds
the checks in flight, and hands the result to the pure rules, whose new
status goes through the store (a health change is a change like any other:
it bumps the revision and the DNS answers follow at once).

HTTP checks speak just enough HTTP/1.1 (``dnsreg.health.http_probe``) over a plain
asyncio transport: a full client session cost three times the CPU per
probe, and the checker makes a thousand probes a second at 10 000 instances.

The checker follows the store's change stream: a registration starts its
checks (the first run at once), a replacement with other checks restarts
them, and a deregistration, replacement or expiry cancels them on the spot,
probe in flight included. A probe never blocks the event loop: connects,
reads and name lookups are asynchronous and every probe is cut off at its
timeout, so an unreachable target costs one pending socket, not a stall.

:class:`PanicWatch` logs services entering and leaving panic mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

from dnsreg.core.durations import format_duration
from dnsreg.core.errors import LOCAL_RESOURCE_ERRNOS, InvalidInput, NotFound, Unavailable
from dnsreg.core.model import Check, Health, Instance
from dnsreg.core.registry import Change, ChangeKind, Registry
from dnsreg.core.targets import HttpTarget
from dnsreg.health.http_probe import HttpAnswer, ProtocolError, ResponseReader
from dnsreg.health.outcome import HostTurns, error_kind, host_of, status_line
from dnsreg.health.rules import (
    MAX_OUTPUT,
    ProbeResult,
    apply_result,
    deregister_at,
    first_run,
    following_run,
    http_verdict,
    spread_offset,
    ttl_expire,
    ttl_expires_at,
    ttl_report,
)
from dnsreg.store import Store

log = logging.getLogger("dnsreg.health")

DEFAULT_CONCURRENCY = 256
Key = tuple[str, str]


class Checker:
    """Runs the checks of every instance the store holds (and this node owns)."""

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        per_address: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = store.registry
        self.clock = clock
        self.concurrency = concurrency
        self._tls: ssl.SSLContext | None = None  # made on first use: it is not cheap
        self._slots = asyncio.Semaphore(concurrency)
        # SPEC §7: at most one probe in flight per target host, so many
        # registrations aimed at one host cannot make the checker a flood.
        self._hosts = HostTurns(per_address)
        self._tasks: dict[Key, list[asyncio.Task[None]]] = {}
        self._closing = False
        # TTL checks sleep on these between their deadlines; a report sets them.
        self._reports: dict[Key, asyncio.Event] = {}
        # Plain counters, read by /metrics at scrape time.
        self.results: Counter[str] = Counter()
        self.in_flight = 0
        self.local_errors = 0  # probes that could not run (EMFILE, ...): no verdict
        self._local_logged_at = -1e9

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.store.subscribe(self._on_change)
        self.store.subscribe_membership(self._rebalance)
        # After a restart: resume every check, spread over its interval.
        for instance in list(self.registry.all_instances()):
            self._start(instance, fresh=False)
        log.info(
            "health checker: %d check(s) of %d instance(s), at most %d in flight",
            self.scheduled,
            len(self._tasks),
            self.concurrency,
        )

    async def close(self) -> None:
        self._closing = True
        tasks = [task for tasks in self._tasks.values() for task in tasks]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def scheduled(self) -> int:
        """Checks with a running schedule."""
        return sum(len(tasks) for tasks in self._tasks.values())

    # ------------------------------------------------------- following changes
    def _on_change(self, change: Change) -> None:
        if self._closing:
            return
        key = (change.service, change.id)
        kind = change.kind
        if kind is ChangeKind.HEALTH:
            reported = self._reports.get(key)
            if reported is not None:  # a TTL check's task counts its TTL anew
                reported.set()
            return
        if kind in (ChangeKind.DEREGISTERED, ChangeKind.EXPIRED):
            self._stop(key)
        elif kind is ChangeKind.REGISTERED and change.after is not None:
            self._stop(key)  # a mirror may see a registration of a key it still runs
            self._start(change.after, fresh=True)
        elif kind is ChangeKind.REPLACED and change.after is not None:
            same = change.before is not None and change.before.reg.checks == change.after.reg.checks
            if not same or key not in self._tasks:
                # New checks: old results mean nothing, start over at once.
                self._stop(key)
                self._start(change.after, fresh=True)

    def _rebalance(self) -> None:
        """The nodes sharing the registry changed: run exactly the checks we own now."""
        if self._closing:
            return
        for instance in list(self.registry.all_instances()):
            key = instance.reg.key
            owned = self.store.owns_check(*key)
            if owned and key not in self._tasks:
                self._start(instance, fresh=False)
            elif not owned and key in self._tasks:
                self._stop(key)

    def _start(self, instance: Instance, *, fresh: bool) -> None:
        reg = instance.reg
        if not reg.checks or not self.store.owns_check(reg.service, reg.id):
            return
        self._tasks[reg.key] = [
            asyncio.create_task(
                self._run(reg.key, index, check, fresh=fresh or status.pending),
                name=f"check {reg.service}/{reg.id}[{index}]",
            )
            for index, (check, status) in enumerate(zip(reg.checks, instance.checks, strict=True))
        ]

    def _stop(self, key: Key) -> None:
        self._reports.pop(key, None)
        current = asyncio.current_task()
        for task in self._tasks.pop(key, ()):
            # A check that deregisters its own instance is the current task:
            # it returns by itself once the deregistration is durable.
            if task is not current:
                task.cancel()

    # ---------------------------------------------------------------- one check
    async def _run(self, key: Key, index: int, check: Check, *, fresh: bool) -> None:
        if check.kind == "ttl":
            await self._run_ttl(key, index, check)
            return
        loop = asyncio.get_running_loop()
        service, instance_id = key
        offset = spread_offset(f"{service}/{instance_id}/{index}", check.interval)
        at = first_run(loop.time(), check.interval, offset, fresh=fresh)
        target: HttpTarget | None = None
        if check.kind == "http":
            with contextlib.suppress(ValueError):  # reported by every run instead
                target = HttpTarget.parse(check.target)
        while True:
            instance = self.registry.get(service, instance_id)
            if instance is None or index >= len(instance.checks):
                return
            remove_at = deregister_at(check, instance.checks[index])
            if remove_at is not None:
                remove_in = remove_at - self.clock()
                if loop.time() + remove_in <= at:
                    await asyncio.sleep(max(0.0, remove_in))
                    await self._deregister(key, index, check)
                    return
            await asyncio.sleep(max(0.0, at - loop.time()))
            try:
                result = await self.probe(check, target)
                if result is not None:
                    if log.isEnabledFor(logging.DEBUG):  # one line per probe: only when asked
                        log.debug(
                            "check %s/%s[%d] attempt: %s in %.1fms: %s", service, instance_id,
                            index, result.health.value, result.duration * 1000, result.output,
                        )  # fmt: skip
                    await self._record(key, index, check, result)
            except asyncio.CancelledError:
                raise
            except Unavailable:  # the store is degraded and says so itself; retry next run
                log.debug("check %s/%s[%d]: result not recorded", service, instance_id, index)
            except Exception:  # keep checking: the next run may well succeed
                log.exception("check %s/%s[%d] failed to run", service, instance_id, index)
            at = following_run(at, loop.time(), check.interval, offset)

    async def _run_ttl(self, key: Key, index: int, check: Check) -> None:
        """A TTL check: nothing to probe; sleep until its TTL or ``deregister_after``
        runs out, then look again (a report meanwhile moves the deadline on)."""
        service, instance_id = key
        watched_since = self.clock()
        while True:
            instance = self.registry.get(service, instance_id)
            if instance is None or index >= len(instance.checks):
                return
            if instance.reg.checks[index] != check:
                return  # replaced: the new registration runs its own task
            status = instance.checks[index]
            now = self.clock()
            expires = ttl_expires_at(check, status, instance.registered_at, watched_since)
            if expires is not None and expires <= now:
                after = ttl_expire(check, status, now)
                log.warning("check %s/%s[%d] %s", service, instance_id, index, after.output)
                with contextlib.suppress(NotFound):
                    await self.store.record_check(service, instance_id, index, after)
                continue
            remove_at = deregister_at(check, status)
            if remove_at is not None and remove_at <= now:
                await self._deregister(key, index, check)
                return
            due = [t for t in (expires, remove_at) if t is not None]
            # Critical without deregister_after: only a report changes anything,
            # and every report is a change _on_change passes on through this event.
            woken = self._reports.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(due) - now if due else None):
                    await woken.wait()
            woken.clear()

    async def report_ttl(
        self, service: str, instance_id: str, index: int, health: Health, output: str
    ) -> Instance:
        """A service reports the state of its TTL check (Consul's check pass/warn/fail).

        The report goes through the rules like a probe result and is stored like
        one; the check's task wakes to count its TTL from now.
        """
        instance = self.registry.require(service, instance_id)
        if index >= len(instance.reg.checks) or instance.reg.checks[index].kind != "ttl":
            raise InvalidInput(f"check {index} of {service}/{instance_id} is not a TTL check")
        check = instance.reg.checks[index]
        after = ttl_report(check, instance.checks[index], health, output, self.clock())
        await self.store.record_check(service, instance_id, index, after)
        return self.registry.require(service, instance_id)

    async def probe(self, check: Check, target: HttpTarget | None = None) -> ProbeResult | None:
        """Run ``check`` once (waiting for its host and a free slot first); never raises for
        the target's failures, which are results like any other. ``target``: the check's
        URL, parsed.

        None: the probe could not run for a local reason (out of descriptors or
        buffers): that says nothing of the target, so the check keeps its state."""
        loop = asyncio.get_running_loop()
        if check.kind == "http":
            with contextlib.suppress(ValueError):  # reported as the result below
                target = target or HttpTarget.parse(check.target)
        # The host's turn first, then a global slot: checks queued behind one slow
        # host must not hold slots that checks of other hosts could use.
        async with self._hosts.turn(_host_of(check, target)), self._slots:
            self.in_flight += 1
            started, t0 = self.clock(), loop.time()
            try:
                async with asyncio.timeout(check.timeout):
                    if check.kind == "http":
                        target = target or HttpTarget.parse(check.target)
                        health, output = await self._http(target, check.connect_to)
                    else:
                        health, output = await self._tcp(check.target, check.connect_to)
            except TimeoutError:
                health = Health.CRITICAL
                output = f"{_what(check)}: timed out after {format_duration(check.timeout)}"
            except OSError as exc:
                if exc.errno in LOCAL_RESOURCE_ERRNOS:
                    self._local_error(check, exc)
                    return None
                health, output = Health.CRITICAL, f"{_what(check)}: {error_kind(exc)}"
            except Exception as exc:  # refused, reset, bad name, TLS, ...: all say "critical"
                health, output = Health.CRITICAL, f"{_what(check)}: {error_kind(exc)}"
            finally:
                self.in_flight -= 1
            duration = loop.time() - t0
        self.results[health.value] += 1
        return ProbeResult(health, output, started, duration)

    def _local_error(self, check: Check, exc: OSError) -> None:
        """Logged, at most every 10 s (a descriptor shortage hits every probe at once)."""
        self.local_errors += 1
        now = time.monotonic()
        if now - self._local_logged_at >= 10.0:
            self._local_logged_at = now
            log.error(
                "health probes cannot run: %s (%d so far; %s and the others keep their state)",
                _describe(exc), self.local_errors, _what(check),
            )  # fmt: skip

    async def _http(self, target: HttpTarget, connect_to: str | None) -> tuple[Health, str]:
        answer = await self._get(target, connect_to)
        # SPEC §7: the status line only. The body (and the server's own reason
        # phrase) is the target's data, and check output is shown to anyone who
        # can read the API, the log or the event stream: an internal URL's
        # secret must not come back through it.
        return http_verdict(answer.status), f"HTTP GET {target.url}: {status_line(answer.status)}"

    async def _get(self, target: HttpTarget, connect_to: str | None = None) -> HttpAnswer:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[HttpAnswer] = loop.create_future()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        transport, _ = await loop.create_connection(
            lambda: _HttpProbe(target.request, answered),
            connect_to or target.host,
            target.port,
            ssl=tls,
            server_hostname=target.host if tls is not None else None,
        )
        try:
            return await answered
        finally:
            transport.close()  # at once, also on timeout: the rest of the body is not needed

    async def _tcp(self, target: str, connect_to: str | None = None) -> tuple[Health, str]:
        host, _, port = target.rpartition(":")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            asyncio.Protocol, connect_to or host.strip("[]"), int(port)
        )
        transport.close()
        return Health.PASSING, f"TCP connect {target}: success"

    async def _record(self, key: Key, index: int, check: Check, result: ProbeResult) -> None:
        service, instance_id = key
        instance = self.registry.get(service, instance_id)
        if instance is None or index >= len(instance.checks) or instance.reg.checks[index] != check:
            return  # gone or replaced while the probe ran
        before = instance.checks[index]
        after = apply_result(check, before, result)
        fields = {"service": service, "id": instance_id, "check": index}
        if after.state is not before.state:
            level = logging.WARNING if after.state is Health.CRITICAL else logging.INFO
            log.log(  # the output names the check: "HTTP GET <url>: 500 ..."
                level,
                "check %s/%s[%d] %s -> %s: %s",
                service,
                instance_id,
                index,
                before.state.value,
                after.state.value,
                after.output,
                extra={**fields, "before": before.state.value, "after": after.state.value},
            )
        elif before.pending and result.health is Health.CRITICAL:
            # Checks start critical ("not run yet"), so a check that fails from its very
            # first run changes no state: without this line it would never be logged.
            log.warning(
                "check %s/%s[%d] critical from its first run (never passed): %s",
                service, instance_id, index, after.output,
                extra={**fields, "before": "pending", "after": after.state.value},
            )  # fmt: skip
        with contextlib.suppress(NotFound):  # deregistered meanwhile
            await self.store.record_check(service, instance_id, index, after)

    async def _deregister(self, key: Key, index: int, check: Check) -> None:
        service, instance_id = key
        instance = self.registry.get(service, instance_id)
        if instance is None or instance.reg.checks[index] != check:
            return
        assert check.deregister_after is not None
        log.warning(
            "deregistering %s/%s: check %d (%s) critical for %s (deregister_after): %s",
            service,
            instance_id,
            index,
            _what(check),
            format_duration(check.deregister_after),
            instance.checks[index].output,
        )
        with contextlib.suppress(NotFound):  # deregistered by someone else meanwhile
            await self.store.deregister(service, instance_id)


class _HttpProbe(asyncio.Protocol):
    """Sends the request, feeds the answer to a :class:`ResponseReader`, resolves ``answered``."""

    def __init__(self, request: bytes, answered: asyncio.Future[HttpAnswer]) -> None:
        self.request = request
        self.answered = answered
        self.reader = ResponseReader(MAX_OUTPUT)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they quack alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            return
        try:
            answer = self.reader.feed(data)
        except ProtocolError as exc:
            self.answered.set_exception(exc)
            return
        if answer is not None:
            self.answered.set_result(answer)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answered.done():
            return
        if exc is not None:
            self.answered.set_exception(exc)
            return
        try:
            self.answered.set_result(self.reader.eof())
        except ProtocolError as error:
            self.answered.set_exception(error)


def _host_of(check: Check, target: HttpTarget | None) -> str:
    if check.connect_to is not None:
        return host_of(check.connect_to)
    if target is not None:
        return host_of(target.host)
    return host_of(check.target.rpartition(":")[0] if check.kind == "tcp" else check.target)


def _what(check: Check) -> str:
    if check.kind == "ttl":
        return f"TTL {check.target}"
    return f"HTTP GET {check.target}" if check.kind == "http" else f"TCP connect {check.target}"


def _describe(exc: BaseException) -> str:
    """For local failures only (our descriptors, our buffers): never a target's words."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class PanicWatch:
    """Logs when a service enters or leaves panic mode (SPEC §1), and counts them."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.in_panic: set[str] = set()

    def start(self, store: Store) -> None:
        for service in list(self.registry.services()):
            self._look(service)
        store.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        self._look(change.service)

    def _look(self, service: str) -> None:
        if self.registry.panic_threshold is None:
            return
        panic = self.registry.in_panic(service)
        if panic == (service in self.in_panic):
            return
        instances = self.registry.instances(service).values()
        served = sum(1 for i in instances if i.served)
        if panic:
            self.in_panic.add(service)
            log.warning(
                "panic: service %s has %d of %d instance(s) healthy, below the panic "
                "threshold %.0f%%: serving every live instance",
                service,
                served,
                len(instances),
                (self.registry.panic_threshold or 0) * 100,
            )
        else:
            self.in_panic.discard(service)
            log.warning(
                "panic over: service %s has %d of %d instance(s) healthy",
                service,
                served,
                len(instances),
            )
