"""Keeping one instance registered: register, heartbeat, re-register, deregister.

:meth:`dnsreg.client.Client.registration` returns a :class:`Lease`; this module
holds its loop, which outlives server restarts and network blips.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dnsreg.client.registration import InstanceSpec
from dnsreg.core.errors import DnsregError, NotFound, ServerError, Unavailable, Unreachable

if TYPE_CHECKING:
    from dnsreg.client.client import Client

log = logging.getLogger("dnsreg.client")

# Transient failures: worth retrying, never the caller's fault.
TRANSIENT = (Unreachable, Unavailable, ServerError)
RETRY_FIRST = 0.2  # seconds before the first retry; doubles up to the heartbeat interval


class Lease:
    """Keeps one instance registered; see :meth:`Client.registration`."""

    def __init__(self, client: Client, spec: InstanceSpec, *, require_server: bool = True) -> None:
        self.client = client
        self.spec = spec
        self.require_server = require_server
        self.revision: int | None = None
        self.instance: dict[str, Any] | None = None
        self.registered = False  # the server holds it, as far as we know
        self.registrations = 0  # how many times it was (re-)registered
        self._task: asyncio.Task[None] | None = None
        self._ever = False

    @property
    def ever_registered(self) -> bool:
        """True once a registration went through (so closing deregisters)."""
        return self._ever

    @property
    def service(self) -> str:
        return self.spec.service

    @property
    def id(self) -> str:
        return self.spec.id

    async def __aenter__(self) -> Lease:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            await self._register()
        except TRANSIENT as exc:
            if self.require_server:
                raise
            log.warning("%s/%s: not registered yet (%s); retrying", self.service, self.id, exc)
        self._task = asyncio.create_task(self._keep(), name=f"lease {self.service}/{self.id}")

    async def update(self, spec: InstanceSpec) -> None:
        """Replace the registration with ``spec`` (same service and id or not)."""
        if spec.key != self.spec.key and self._ever:
            await self._deregister()
            self._ever = False
        self.spec = spec
        await self._stop_keeper()
        try:
            await self._register()
        except TRANSIENT as exc:
            log.warning("%s/%s: update not sent yet (%s); retrying", self.service, self.id, exc)
        finally:
            # Refused or not, keep trying: the keeper registers whatever spec is current.
            self._task = asyncio.create_task(self._keep(), name=f"lease {self.service}/{self.id}")

    async def close(self, *, deregister: bool = True) -> None:
        """Stop heartbeating and (by default) deregister, even when being cancelled."""
        await self._stop_keeper()
        if not deregister or not self._ever:
            return
        # Shielded: a second cancellation must not leave the instance in DNS until
        # its lease runs out; the request finishes in the background.
        await asyncio.shield(asyncio.ensure_future(self._deregister()))

    async def _stop_keeper(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # without swallowing a cancellation of our own

    async def _register(self) -> None:
        try:
            reply = await self.client.register_spec(self.spec)
        except BaseException:
            self.registered = False
            raise
        self.instance = reply.get("instance")
        self.revision = reply.get("revision")
        self.registered = True
        self._ever = True
        self.registrations += 1

    async def _deregister(self) -> None:
        try:
            await self.client.deregister(self.service, self.id)
        except NotFound:
            pass  # already gone: the goal is met
        except DnsregError as exc:
            log.warning(
                "%s/%s: deregistration failed (%s); its lease will run out",
                self.service,
                self.id,
                exc.message,
            )
        self.registered = False

    async def _keep(self) -> None:
        failures = 0
        while True:
            interval = self.spec.heartbeat_interval
            delay = interval if failures == 0 else min(interval, RETRY_FIRST * 2 ** (failures - 1))
            await asyncio.sleep(delay)
            try:
                if not self.registered:
                    await self._register()
                else:
                    try:
                        await self.client.heartbeat(self.service, self.id)
                    except NotFound:
                        log.info("%s/%s: the server lost it; registering again", *self.spec.key)
                        await self._register()
                failures = 0
            except TRANSIENT as exc:
                # The server may come back without us (a restart from an older
                # state): the next contact registers in full rather than heartbeats.
                self.registered = False
                failures += 1
                log.warning("%s/%s: %s; retrying", self.service, self.id, exc.message)
            except DnsregError as exc:
                self.registered = False
                failures += 1
                log.error("%s/%s: the server refused it: %s", self.service, self.id, exc.message)
