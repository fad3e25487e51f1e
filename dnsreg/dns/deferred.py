"""Messages answered later, off the listener's callback: UPDATEs and queries that wait.

The listeners call the responder synchronously; when it returns ``None`` they
ask :class:`Deferrals` whether the message is answered later, and if so await
what it returns and send that. Two kinds are:

* a DNS UPDATE (RFC 2136), carried out by ``dns/updater`` through the store;
* a query whose answer needs the material of a large service that is being
  built in slices (``dns/material_cache``). :class:`Builds` steps each such
  build one slice per turn of the event loop, so no query holds the loop for
  long, then answers every query that waited for it;
* a zone transfer asked while the IXFR journal catches up (``journal_keeper``):
  sent once it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dnsreg.dns.journal_keeper import JournalKeeper
from dnsreg.dns.material_cache import BUILD_SLICE, Build
from dnsreg.dns.responder import Responder
from dnsreg.dns.wire import is_update
from dnsreg.dns.xfr_out import TransferStream

log = logging.getLogger("dnsreg.dns")

# A query asks again this many times after a build it waited for (another may have
# become due meanwhile, e.g. a burst of writes); then it is dropped, as UDP may be.
MAX_ROUNDS = 4

UpdateHandler = Callable[[bytes, str], Awaitable[bytes | None]]
Later = bytes | list[bytes] | TransferStream | None  # what answers a message later


class Builds:
    """Steps material builds between other work and answers the queries waiting on them."""

    def __init__(self, responder: Responder, slice_size: int = BUILD_SLICE) -> None:
        self.responder = responder
        self.slice_size = slice_size
        self._running: dict[Build, asyncio.Task[None]] = {}
        self.completed = 0
        self.waited = 0  # queries answered after waiting for a build

    async def answer(self, build: Build, data: bytes, tcp: bool) -> bytes | None:
        """The reply to ``data`` once the builds it needs are done (None: gave up)."""
        responder = self.responder
        for _ in range(MAX_ROUNDS):
            await asyncio.shield(self._task(build))
            reply = responder.respond(data, tcp=tcp)
            if reply is not None:
                self.waited += 1
                return reply
            pending = responder.take_pending()
            if pending is None:
                return None  # malformed after all, or the like: nothing to send
            build = pending
        log.warning("a query waited for %d material builds in a row; dropped it", MAX_ROUNDS)
        return None

    def _task(self, build: Build) -> asyncio.Task[None]:
        task = self._running.get(build)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run(build))
            self._running[build] = task
            task.add_done_callback(lambda _: self._running.pop(build, None))
        return task

    async def _run(self, build: Build) -> None:
        materials = self.responder.materials
        try:
            # Not a wait for a condition: a yield, so the loop serves what came in meanwhile.
            while not materials.step(build, self.slice_size):  # noqa: ASYNC110
                await asyncio.sleep(0)
        except BaseException:
            materials.abandon(build)
            raise
        self.completed += 1

    def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()


class Deferrals:
    """The one place that decides which ``None`` answers are answered later, and how."""

    def __init__(
        self,
        responder: Responder,
        updates: UpdateHandler | None = None,
        journal: JournalKeeper | None = None,
    ) -> None:
        self.responder = responder
        self.updates = updates
        self.journal = journal
        self.builds = Builds(responder)

    def __call__(self, data: bytes, client: str, tcp: bool) -> Awaitable[Later] | None:
        """What answers ``data`` later (None: nothing will; drop it or close)."""
        responder = self.responder
        build = responder.take_pending()
        if build is not None:
            return self.builds.answer(build, data, tcp)
        if responder.take_transfer_wait() and self.journal is not None:
            return self._transfer(self.journal, data, client)
        if self.updates is not None and is_update(data):
            return self.updates(data, client)
        return None

    async def _transfer(self, journal: JournalKeeper, data: bytes, client: str) -> Later:
        """A zone transfer once the journal has caught up (or, after a few rounds of
        writes keeping it busy, with the journal made to catch up at once)."""
        for _ in range(MAX_ROUNDS):
            await journal.idle()
            if not journal.busy:
                break
        return self.responder.transfer_now(data, client)

    def close(self) -> None:
        self.builds.close()
