"""``dnsreg run --name web --port 8080 -- CMD ARGS...``: make an unmodified program discoverable.

Starts CMD, registers it once its port accepts connections (so DNS never hands
out an address nobody listens on yet; ``--no-wait`` registers at once),
heartbeats while it lives, forwards SIGTERM/SIGINT to it, deregisters when it
exits, and exits with its exit code (128+N when a signal N ended it, as shells do).

CMD runs in its own session: a Ctrl-C at the terminal reaches dnsreg only,
which forwards it once, instead of the terminal and dnsreg each delivering one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence

from dnsreg.client.client import Client
from dnsreg.client.registration import InstanceSpec
from dnsreg.core.errors import DnsregError

log = logging.getLogger("dnsreg.run")

FORWARDED = (signal.SIGTERM, signal.SIGINT)
READY_POLL = 0.05  # seconds between connection attempts while CMD starts
READY_NOTICE = 10.0  # say once that we are still waiting, after this long


def exit_status(returncode: int) -> int:
    """The shell's convention: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


async def wait_until_listening(host: str, port: int) -> None:
    """Return once ``host:port`` accepts a TCP connection (CMD is another process: poll)."""
    started = time.monotonic()
    noticed = False
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if not noticed and time.monotonic() - started > READY_NOTICE:
                log.warning(
                    "still waiting for %s:%d to accept connections before registering "
                    "(--no-wait registers at once)",
                    host,
                    port,
                )
                noticed = True
            await asyncio.sleep(READY_POLL)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def run(
    client: Client,
    spec: InstanceSpec,
    command: Sequence[str],
    *,
    wait_ready: bool = True,
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

    def forward(sig: signal.Signals) -> None:
        if proc.returncode is None:
            log.info("forwarding %s to pid %d", sig.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    for sig in FORWARDED:
        loop.add_signal_handler(sig, forward, sig)
    exited = asyncio.create_task(proc.wait())
    lease = None
    try:
        if wait_ready and spec.proto in (None, "tcp"):
            ready = asyncio.create_task(
                wait_until_listening(spec.address or "127.0.0.1", spec.port)
            )
            await asyncio.wait([ready, exited], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                log.info("%s exited before it listened; never registered", command[0])
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
        if lease is not None:
            registered = lease.ever_registered
            await lease.close()
            if registered:
                log.info("deregistered %s/%s", spec.service, spec.id)
        if proc.returncode is None:  # we are failing ourselves: do not leave CMD behind
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await exited
