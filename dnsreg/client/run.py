"""``dnsreg run --name web --port 8080 -- CMD ARGS...``: make an unmodified program discoverable.

Starts CMD, registers it once its port is held by CMD or a process CMD started
(:mod:`dnsreg.client.ports`; so DNS never hands out an address nobody listens on
yet, nor one where another program listens; ``--no-wait`` registers at once),
heartbeats while it lives, drains it on SIGTERM/SIGINT (withdraw from DNS, wait
its ``dns_ttl`` so resolvers forget it, :mod:`dnsreg.core.drain`) and only then
forwards the signal, deregisters when it exits, and exits with its exit code
(128+N when a signal N ended it, as shells do). A second signal during the drain
is forwarded at once.

CMD runs in its own session: a Ctrl-C at the terminal reaches dnsreg only,
which forwards it once, instead of the terminal and dnsreg each delivering one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Sequence

from dnsreg.client.client import Client
from dnsreg.client.ports import PortOwner, PortState, port_state
from dnsreg.client.registration import InstanceSpec
from dnsreg.core.drain import start_timer
from dnsreg.core.errors import DnsregError

log = logging.getLogger("dnsreg.run")

FORWARDED = (signal.SIGTERM, signal.SIGINT)
READY_POLL = 0.05  # seconds between looks while CMD starts
FOREIGN_POLL = 0.5  # seconds between looks while another process holds the port
READY_NOTICE = 3.0  # say that we are still waiting after this long ...
READY_NOTICE_EVERY = 10.0  # ... and again at this interval while it lasts


def exit_status(returncode: int) -> int:
    """The shell's convention: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


async def accepting(host: str, port: int) -> bool:
    """Does ``host:port`` accept a TCP connection right now?"""
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Notices:
    """When to repeat a waiting message: after ``first`` seconds, then every ``every``."""

    def __init__(self, started: float, *, first: float, every: float) -> None:
        self.next = started + first
        self.every = every

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.every
        return True


async def wait_for_own_port(
    pid: int,
    port: int,
    address: str | None,
    *,
    poll: float = READY_POLL,
    notice_after: float = READY_NOTICE,
    notice_every: float = READY_NOTICE_EVERY,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once ``port`` is held by ``pid`` or a descendant; say why while it is not."""
    try:
        ip = ipaddress.ip_address(address) if address else None
    except ValueError:
        ip = None  # the server will refuse it, with a better message than ours
    started = clock()
    waiting = Notices(started, first=notice_after, every=notice_every)
    foreign: str | None = None
    while True:
        # A refused connection means nobody listens, for a fraction of a millisecond;
        # reading /proc/net/tcp costs milliseconds per thousand sockets on the machine,
        # so it is read only once something accepts.
        if not await accepting(address or "127.0.0.1", port):
            state = PortState(PortOwner.NOBODY)
        else:
            state = port_state(port, pid, address=ip)
            if state.owner in (PortOwner.UNKNOWN, PortOwner.NOBODY):
                # No /proc here, or the listener is out of its sight (another network
                # namespace): a connection that was accepted is the best evidence left.
                return
        if state.owner is PortOwner.CHILD:
            if foreign is not None:
                log.info("port %d is now held by the command; registering", port)
            return
        now = clock()
        if state.owner is PortOwner.OTHER:
            if foreign != state.detail:
                waiting = Notices(now, first=0.0, every=notice_every)
                foreign = state.detail
            if waiting.due(now):
                log.warning(
                    "port %d is held by another process, %s, not by the command: "
                    "not registering (DNS would send its clients there)",
                    port, state.detail,
                )  # fmt: skip
        else:
            foreign = None
            if waiting.due(now):
                log.warning(
                    "still waiting for port %d to be listened on by the command "
                    "(%.0fs so far) before registering; --no-wait registers at once",
                    port, now - started,
                )  # fmt: skip
        # Another holder rarely lets go soon, and each look at it reads /proc: look less.
        await asyncio.sleep(poll if foreign is None else max(poll, FOREIGN_POLL))


async def run(
    client: Client,
    spec: InstanceSpec,
    command: Sequence[str],
    *,
    wait_ready: bool = True,
    drain_wait: float | None = None,
) -> int:
    """Run ``command`` registered as ``spec``; return the exit status to exit with."""
    if not command:
        raise DnsregError("nothing to run: give the command after `--`")
    try:
        proc = await asyncio.create_subprocess_exec(*command, start_new_session=True)
    except OSError as exc:
        raise DnsregError(f"cannot start {command[0]}: {exc.strerror or exc}") from exc
    log.info("started %s (pid %d)", " ".join(command), proc.pid)
    loop = asyncio.get_running_loop()

    exited = asyncio.create_task(proc.wait())
    lease = None
    draining: asyncio.Task[None] | None = None

    def forward_now(sig: signal.Signals) -> None:
        if proc.returncode is None:
            log.info("forwarding %s to pid %d", sig.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def drain_then_forward(sig: signal.Signals) -> None:
        try:
            reply = await client.drain(spec.service, spec.id)
            timer = start_timer(time.monotonic(), float(reply["wait"]), drain_wait)
            log.info(
                "%s: withdrawn from DNS; waiting %gs for resolver caches before "
                "forwarding %s (a second signal forwards it now)",
                spec.id, timer.wait, sig.name,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), timer.remaining(time.monotonic()))
        except DnsregError as exc:
            log.warning(
                "could not drain %s (%s); forwarding %s now", spec.id, exc.message, sig.name
            )
        forward_now(sig)

    def on_signal(sig: signal.Signals) -> None:
        nonlocal draining
        registered = lease is not None and lease.registered
        if draining is not None or not registered or drain_wait == 0:
            if draining is not None and not draining.done():
                draining.cancel()
            forward_now(sig)
            return
        draining = asyncio.create_task(drain_then_forward(sig))

    for sig in FORWARDED:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        if wait_ready and spec.proto in (None, "tcp"):
            ready = asyncio.create_task(wait_for_own_port(proc.pid, spec.port, spec.address))
            await asyncio.wait([ready, exited], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                log.info(
                    "%s exited before it listened on port %d; never registered",
                    command[0],
                    spec.port,
                )
                return exit_status(await exited)
        lease = client.registration(spec, require_server=False)
        await lease.start()
        if lease.registered:
            log.info("registered %s/%s on port %d", spec.service, spec.id, spec.port)
        returncode = await exited
        log.info("%s exited with %d", command[0], returncode)
        return exit_status(returncode)
    finally:
        for sig in FORWARDED:
            loop.remove_signal_handler(sig)
        if draining is not None and not draining.done():
            draining.cancel()
        if lease is not None:
            registered = lease.ever_registered
            await lease.close()
            if registered:
                log.info("deregistered %s/%s", spec.service, spec.id)
        if proc.returncode is None:  # we are failing ourselves: do not leave CMD behind
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await exited
