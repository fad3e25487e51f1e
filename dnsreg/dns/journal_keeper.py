"""Keeps the IXFR journal caught up with the registry, off the store's write path.

Every change is told to the journal (:meth:`JournalKeeper.changed`) and a task
asks it to catch up a slice of :data:`JOURNAL_SLICE` instances per turn of the
event loop: a burst of 10 000 expiries, or a panic flip of a 50 000-instance
service, is seconds of work that must not hold the loop. Changes that land
meanwhile join the same journal entry. A transfer asked in the middle catches
up at once (``xfr_out``). Once caught up, secondaries are sent NOTIFY.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dnsreg.core.registry import Change
from dnsreg.dns.notify import Notifier
from dnsreg.dns.transfer import Journal
from dnsreg.dns.zones import StaticZones

# Instances the journal asks again per turn of the loop (~150-200 µs each: ~3 ms a turn).
JOURNAL_SLICE = 16


class JournalKeeper:
    def __init__(
        self,
        journal: Journal,
        static: Callable[[], StaticZones],
        notifier: Notifier | None = None,
        slice_size: int = JOURNAL_SLICE,
    ) -> None:
        self.journal = journal
        self.static = static
        self.notifier = notifier
        self.slice_size = slice_size
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None

    @property
    def busy(self) -> bool:
        """Catching up: a transfer asked now waits for it (dns/deferred)."""
        return self._task is not None

    async def idle(self) -> None:
        """Return once the journal has caught up."""
        if self._task is None:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()

    def changed(self, change: Change | None = None) -> None:
        """A store subscriber: one change (None: the zone files, or the first snapshot)."""
        if change is not None:
            self.journal.touch(change.service, change.id)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        journal = self.journal
        try:
            # Not a wait for a condition: a yield, so the loop serves what came in meanwhile.
            while not journal.observe(self.static(), budget=self.slice_size):  # noqa: ASYNC110
                await asyncio.sleep(0)
        finally:
            self._task = None
            if self._idle is not None:
                self._idle.set()
                self._idle = None
        if self.notifier is not None:
            self.notifier.changed()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
