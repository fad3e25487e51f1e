"""The embedded store: the registry in memory, every change committed to SQLite.

Durability: WAL with ``synchronous=FULL``, and a write is acknowledged only
after the transaction holding it has committed. Writers are batched (group
commit): whatever changes queue up while one transaction commits go into the
next, so a burst of registrations costs one fsync per batch, not per write.

Leases are kept here too: heartbeats only touch memory (a restart gives every
lease a fresh full TTL anyway, SPEC §3), and a timer expires leases at their
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from dnsreg.core.errors import Unavailable
from dnsreg.core.model import CheckStatus, Instance, Registration
from dnsreg.core.registry import Change, ChangeKind, Registry
from dnsreg.store.base import Store, instance_from_row, instance_to_row

log = logging.getLogger("dnsreg.store.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    service TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (service, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Self-preservation: seconds between assessments while it holds, and between reminders.
GUARD_RECHECK = 1.0
GUARD_REMIND = 60.0
GUARD_REUSE = 0.25  # seconds a "do not hold" verdict stands

# Pending write: (service, id, row or None for delete, revision).
_Write = tuple[str, str, bytes | None, int]

_encode = msgspec.json.Encoder().encode


def create(url: str, *, data_dir: Path, registry: Registry, clock: Callable[[], float]) -> Store:
    parts = urlsplit(url)
    path = Path(parts.path) if parts.scheme == "sqlite" and parts.path else None
    path = path or data_dir / "registry.sqlite3"
    return SqliteStore(path, registry, clock)


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, path: Path, registry: Registry, clock: Callable[[], float]) -> None:
        super().__init__(registry, clock)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[_Write, asyncio.Future[None]]] = []
        self._changes: dict[asyncio.Future[None], Change] = {}
        self._flush_wanted = asyncio.Event()
        self._schedule_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._guard_reminded = 0.0

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db
        now = self.clock()
        rows = db.execute("SELECT data FROM instances").fetchall()
        revision_row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        for (data,) in rows:
            self.registry.restore(instance_from_row(msgspec.json.decode(data)), now)
        self.registry.set_revision(int(revision_row[0]) if revision_row else 0)
        log.info(
            "store: sqlite at %s, %d instance(s) restored at revision %d",
            self.path,
            len(rows),
            self.registry.revision,
        )
        self._tasks = [
            asyncio.create_task(self._writer(), name="sqlite-writer"),
            asyncio.create_task(self._expirer(), name="lease-expirer"),
        ]

    async def close(self) -> None:
        self._closing = True
        self._flush_wanted.set()
        self._schedule_changed.set()
        # The writer is not cancelled but drained: cancelling it while a batch
        # runs in its thread would close the connection under that thread
        # (a crash in sqlite3, not an exception).
        writers = [t for t in self._tasks if t.get_name() == "sqlite-writer"]
        others = [t for t in self._tasks if t not in writers]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in writers:
            await task
        if self._pending:
            await self._flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "pending_writes": len(self._pending)}

    def self_preservation(self) -> dict[str, Any]:
        if self.expiry_guard is None:
            return super().self_preservation()
        return self.expiry_guard.describe()

    # ----------------------------------------------------------------- writes
    async def register(self, reg: Registration) -> Change:
        change = self.registry.register(reg, self.clock())
        await self._commit(change)
        self._schedule_changed.set()
        return change

    async def heartbeat(self, service: str, instance_id: str) -> Instance:
        return self.registry.heartbeat(service, instance_id, self.clock())

    async def deregister(self, service: str, instance_id: str) -> Change:
        change = self.registry.deregister(service, instance_id)
        await self._commit(change)
        return change

    async def set_maintenance(
        self, service: str, instance_id: str, reason: str | None
    ) -> Change | None:
        change = self.registry.set_maintenance(service, instance_id, reason)
        if change is not None:
            await self._commit(change)
        return change

    async def record_check(
        self, service: str, instance_id: str, index: int, status: CheckStatus
    ) -> Change | None:
        change = self.registry.set_check_status(service, instance_id, index, status)
        if change is not None:
            await self._commit(change)
        return change

    async def expire_now(self) -> list[Change]:
        """Expire every lease that is due, unless self-preservation holds (SPEC §3).

        The timer calls this; tests may too. The guard is assessed only when a
        lease is really due (or while it holds, to notice it should let go), so
        heartbeats cost nothing here.
        """
        now = self.clock()
        guard = self.expiry_guard
        if guard is not None and guard.enabled:
            if self.registry.first_due(now) is None and not guard.active:
                return []
            # An assessment walks every lease. Leases that lapse one by one at
            # distinct moments would each pay for one; a fresh "no" is reused
            # for a moment instead (a partition trips the guard at the first
            # due lease anyway: by then every lease is lapsing).
            recent = guard.assessed_at is not None and now - guard.assessed_at < GUARD_REUSE
            if guard.active or not recent:
                was_active = guard.active
                guard.assess(now, self.registry.leases())
                self._log_guard(was_active, now)
            if guard.active:
                return []
        changes = self.registry.expire_due(now)
        if guard is not None:
            for change in changes:
                assert change.before is not None
                guard.expired(now, change.before.reg.ttl)
        if changes:
            await asyncio.gather(*(self._commit(c) for c in changes))
        return changes

    def _log_guard(self, was_active: bool, now: float) -> None:
        guard = self.expiry_guard
        assert guard is not None
        assert guard.last is not None
        last = guard.last
        numbers = (
            f"{last.lapsing} of {last.leases} leases lapsing "
            f"({last.share:.0%}, threshold {guard.fraction:.0%})"
        )
        if guard.active and not was_active:
            self._guard_reminded = now
            log.warning(
                "self-preservation: %s: lease expiry paused. So many leases lapsing at once "
                "more likely means this registry lost its network than that the instances "
                "died; expiry resumes by itself once heartbeats return",
                numbers,
            )
        elif guard.active and now - self._guard_reminded >= GUARD_REMIND:
            self._guard_reminded = now
            log.warning("self-preservation still holding: %s: lease expiry paused", numbers)
        elif was_active and not guard.active:
            log.warning("self-preservation over: %s: lease expiry resumed", numbers)

    # -------------------------------------------------------------- internals
    async def _commit(self, change: Change) -> None:
        """Publish the change, then wait until it is durable."""
        if self._db is None:
            raise Unavailable("the store is closed")
        self._publish(change)
        row = _encode(instance_to_row(change.after)) if change.after is not None else None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((change.service, change.id, row, change.revision), future))
        self._changes[future] = change
        self._flush_wanted.set()
        await future

    async def _writer(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            if self._pending:
                await self._flush()
            if self._closing and not self._pending:
                return

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        writes = [w for w, _ in batch]
        changes = [self._changes.pop(future) for _, future in batch]
        try:
            await asyncio.to_thread(self._write_batch, writes)
        except sqlite3.Error as exc:
            log.error("store: commit of %d change(s) failed: %s", len(batch), exc)
            self._revert(changes)
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(f"the store could not commit: {exc}"))
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _revert(self, changes: list[Change]) -> None:
        """Take back changes that never became durable, so memory matches the disk.

        A change is undone only while the instance still is what the change
        made it; the undo is itself a change (new revision), so caches and
        watchers that saw the failed one see it go.
        """
        for change in reversed(changes):
            current = self.registry.get(change.service, change.id)
            if current is not change.after:
                continue
            undo = Change(
                ChangeKind.REPLACED if change.before is not None else ChangeKind.DEREGISTERED,
                self.registry.revision + 1,
                change.service,
                change.id,
                change.after,
                change.before,
            )
            self.registry.apply(undo)
            self._publish(undo)

    def _write_batch(self, writes: list[_Write]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            top = 0
            for service, instance_id, row, revision in writes:
                if row is None:
                    db.execute(
                        "DELETE FROM instances WHERE service=? AND id=?", (service, instance_id)
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO instances (service, id, data) VALUES (?, ?, ?)",
                        (service, instance_id, row),
                    )
                top = max(top, revision)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('revision', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=max(CAST(value AS INTEGER), excluded.value)",
                (str(top),),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _expirer(self) -> None:
        """Expire leases at their deadline (SPEC §3: within 1 s of it)."""
        while not self._closing:
            self._schedule_changed.clear()
            guard = self.expiry_guard
            if guard is not None and guard.active:
                # Holding: due leases stay due, so the deadline would wake us at
                # once. Re-assess every second instead (each assessment walks
                # every lease, so a burst of registrations must not trigger one each).
                await asyncio.sleep(GUARD_RECHECK)
            else:
                deadline = self.registry.next_deadline()
                delay = 3600.0 if deadline is None else max(0.0, deadline - self.clock())
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._schedule_changed.wait(), timeout=delay)
                    continue
            try:
                changes = await self.expire_now()
            except Exception:
                log.exception("store: lease expiry failed")
                await asyncio.sleep(0.1)
                continue
            for change in changes:
                log.info(
                    "lease expired: %s/%s (revision %d)", change.service, change.id, change.revision
                )
