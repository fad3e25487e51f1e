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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from dnsreg.core.errors import DnsregError, StoreCorrupt, Unavailable
from dnsreg.core.model import CheckStatus, Instance, Registration, Write
from dnsreg.core.registry import Change, Registry
from dnsreg.store.base import Store, instance_from_row, instance_to_row
from dnsreg.store.census import count_leases

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

_OWN_TABLES = {"instances", "meta"}

# Self-preservation: seconds between assessments while it holds, and between reminders.
GUARD_RECHECK = 1.0
GUARD_REMIND = 60.0
GUARD_REUSE = 0.25  # seconds a "do not hold" verdict stands
EXPIRE_BATCH = 250  # leases expired per commit (each removal and its listeners ~40 µs)
FLUSH_MAX = 256  # writes per group commit

# A row to write: (service, id, row or None for delete, revision).
_Write = tuple[str, str, bytes | None, int]
# A write waiting for the writer: it makes its changes on the registry when run.
_Intent = Callable[[], list[Change]]

RECOVERY_PROBE = 2.0  # seconds between commit attempts while degraded


def _cause(exc: sqlite3.Error) -> str:
    """The real cause of a failed commit, in the words an operator searches for."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "disk full"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "database is locked"
    if name.startswith("SQLITE_READONLY"):
        return "database is read-only"
    if name.startswith("SQLITE_IOERR"):
        return f"I/O error: {exc}"
    return str(exc)


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
        self._pending: list[tuple[_Intent, asyncio.Future[list[Change]]]] = []
        self._degraded: str | None = None
        self._flush_wanted = asyncio.Event()
        self._schedule_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._guard_reminded = 0.0

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            rows = self._open(db)
        except BaseException:
            db.close()
            raise
        self._db = db
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

    def _open(self, db: sqlite3.Connection) -> list[Any]:
        """Check the file is dnsreg's, then load it into the registry; returns its rows."""
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            tables = {
                name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            foreign = sorted(tables - _OWN_TABLES)
            if foreign:
                raise self._corrupt(f"it is not dnsreg's database (it holds {', '.join(foreign)})")
            if "instances" in tables:
                columns = [c[1] for c in db.execute("PRAGMA table_info(instances)")]
                if columns != ["service", "id", "data"]:
                    raise self._corrupt("it is not dnsreg's database (unknown instances table)")
            db.executescript(_SCHEMA)
            rows = db.execute("SELECT data FROM instances").fetchall()
            revision_row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
            now = self.clock()
            for (data,) in rows:
                self.registry.restore(instance_from_row(msgspec.json.decode(data)), now)
            self.registry.set_revision(int(revision_row[0]) if revision_row else 0)
        except sqlite3.DatabaseError as exc:
            name = getattr(exc, "sqlite_errorname", "") or ""
            if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
                raise self._corrupt(f"it is damaged or not a database ({exc})") from None
            raise Unavailable(f"cannot open the store {self.path}: {_cause(exc)}") from None
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(f"a row cannot be read ({type(exc).__name__}: {exc})") from None
        return rows

    def _corrupt(self, what: str) -> StoreCorrupt:
        return StoreCorrupt(
            f"the store file {self.path.absolute()} cannot be used: {what}. "
            "Restore a backup (dnsreg backup, see docs/operations.md) "
            "or move the file aside to start empty"
        )

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
        while self._pending:
            await self._flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    async def backup(self, target: Path) -> None:
        """SQLite's online backup API from a connection of its own: one read
        transaction copies every page, so the copy is one consistent revision
        (WAL included) while the writer goes on committing."""
        if self._db is None:
            raise Unavailable("the store is closed")

        def copy() -> None:
            source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                destination = sqlite3.connect(target)
                try:
                    source.backup(destination)
                    # A file that stands alone: no -wal beside it needed.
                    destination.execute("PRAGMA journal_mode=DELETE")
                finally:
                    destination.close()
            finally:
                source.close()

        try:
            await asyncio.to_thread(copy)
        except sqlite3.Error as exc:
            raise Unavailable(f"backup failed: {_cause(exc)}") from None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "pending_writes": len(self._pending)}

    def self_preservation(self) -> dict[str, Any]:
        if self.expiry_guard is None:
            return super().self_preservation()
        return self.expiry_guard.describe()

    # ----------------------------------------------------------------- writes
    # Each write is an intent run by the writer against the registry, staged,
    # committed, and only then applied and published (see Registry.stage).
    async def register(self, reg: Registration) -> Change:
        now = self.clock()
        (change,) = await self._submit(lambda: [self.registry.register(reg, now)])
        self._schedule_changed.set()
        return change

    async def heartbeat(self, service: str, instance_id: str) -> Instance:
        return self.registry.heartbeat(service, instance_id, self.clock())

    async def deregister(self, service: str, instance_id: str) -> Change:
        (change,) = await self._submit(lambda: [self.registry.deregister(service, instance_id)])
        return change

    async def apply(self, writes: Sequence[Write]) -> list[Change]:
        """One intent, so one SQLite transaction: the registry takes the writes back
        itself when one is refused (``Registry.apply_all``), and a failed commit
        unstages the whole batch. Each changed instance takes its own revision
        (consecutive ones: nothing else runs inside an intent)."""
        now = self.clock()
        writes = list(writes)
        changes = await self._submit(lambda: self.registry.apply_all(writes, now))
        self._schedule_changed.set()
        return changes

    async def set_maintenance(
        self, service: str, instance_id: str, reason: str | None
    ) -> Change | None:
        def intent() -> list[Change]:
            change = self.registry.set_maintenance(service, instance_id, reason)
            return [] if change is None else [change]

        changes = await self._submit(intent)
        return changes[0] if changes else None

    async def record_check(
        self, service: str, instance_id: str, index: int, status: CheckStatus
    ) -> Change | None:
        current = self.registry.require(service, instance_id)
        if index < len(current.checks) and current.checks[index].state is status.state:
            # Same state (most probes): not a change, nothing to commit, no queue.
            return self.registry.set_check_status(service, instance_id, index, status)

        def intent() -> list[Change]:
            change = self.registry.set_check_status(service, instance_id, index, status)
            return [] if change is None else [change]

        changes = await self._submit(intent)
        return changes[0] if changes else None

    async def expire_now(self) -> list[Change]:
        """Expire every lease that is due, unless self-preservation holds (SPEC §3).

        The timer calls this; tests may too. The guard is assessed only when a
        lease is really due (or while it holds, to notice it should let go), so
        heartbeats cost nothing here.
        """
        now = self.clock()
        guard = self.expiry_guard
        held = False
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
                # Counted in slices: at 100 000 leases one walk would stall the loop.
                census = await count_leases(self.registry, now, renewed_only=True)
                guard.judge(now, census.leases, census.lapsing)
                self._log_guard(was_active, now)
                if guard.active is not was_active:
                    # A caller other than the timer (a test, an admin path) flipped
                    # the guard: the timer must re-plan (re-assess each second).
                    self._schedule_changed.set()
            # Holding: leases never renewed still expire (SPEC §7), the rest wait.
            held = guard.active
        # In batches, each its own commit: 10 000 leases lapsing together would
        # otherwise be removed and published in one go (~0.5 s of the loop).
        changes: list[Change] = []
        while True:
            batch = await self._submit(
                lambda: self.registry.expire_due(now, held=held, limit=EXPIRE_BATCH)
            )
            changes += batch
            if len(batch) < EXPIRE_BATCH:
                break
        if guard is not None:
            for change in changes:
                assert change.before is not None
                if change.before.renewed:  # the same leases the guard counts
                    guard.expired(now, change.before.reg.ttl)
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
    @property
    def degraded(self) -> str | None:
        return self._degraded or super().degraded

    async def _submit(self, intent: _Intent) -> list[Change]:
        """Queue a write for the writer; returns its changes once they are durable."""
        if self._db is None or self._closing:
            raise Unavailable("the store is closed")
        future: asyncio.Future[list[Change]] = asyncio.get_running_loop().create_future()
        self._pending.append((intent, future))
        self._flush_wanted.set()
        return await future

    async def _writer(self) -> None:
        while True:
            if self._degraded is None:
                await self._flush_wanted.wait()
            else:
                # Degraded: try a commit of our own now and then, so the status
                # recovers without a write (and without a restart).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush_wanted.wait(), RECOVERY_PROBE)
            self._flush_wanted.clear()
            if self._pending:
                await self._flush()
            elif self._degraded is not None and not self._closing:
                await self._probe()
            if self._closing and not self._pending:
                return

    async def _flush(self) -> None:
        # A bounded group commit: what the intents do and what their changes wake
        # (~60 µs a change) runs on the loop in one go, so a burst queued behind a
        # slow commit is taken a slice at a time (the rest waits for the next).
        batch, self._pending = self._pending[:FLUSH_MAX], self._pending[FLUSH_MAX:]
        if self._pending:
            self._flush_wanted.set()
        registry = self.registry
        registry.stage()
        staged: list[tuple[asyncio.Future[list[Change]], list[Change]]] = []
        changes: list[Change] = []
        try:
            for intent, future in batch:
                try:
                    made = intent()
                except DnsregError as exc:  # NotFound, Conflict: that write alone fails
                    if not future.done():
                        future.set_exception(exc)
                    continue
                staged.append((future, made))
                changes.extend(made)
        finally:
            registry.unstage(changes)
        if changes:
            writes = [
                (
                    c.service,
                    c.id,
                    _encode(instance_to_row(c.after)) if c.after is not None else None,
                    c.revision,
                )
                for c in changes
            ]
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._write_batch, writes)
            except sqlite3.Error as exc:
                reason = _cause(exc)
                self._set_degraded(f"{reason} ({self.path})")
                log.error(
                    "store: commit of %d change(s) failed, nothing was changed: %s (%s)",
                    len(changes), reason, exc,
                )  # fmt: skip
                failure = Unavailable(f"the store could not commit: {reason}")
                for future, _ in staged:
                    if not future.done():
                        future.set_exception(failure)
                return
            if self.commit_observer is not None:
                self.commit_observer(time.perf_counter() - started)
            self._set_degraded(None)
            for change in changes:
                registry.redo(change)
                self._publish(change)
        for future, made in staged:
            if not future.done():
                future.set_result(made)

    async def _probe(self) -> None:
        try:
            await asyncio.to_thread(self._write_batch, [])
        except sqlite3.Error as exc:
            self._set_degraded(f"{_cause(exc)} ({self.path})")
        else:
            self._set_degraded(None)

    def _set_degraded(self, reason: str | None) -> None:
        if reason == self._degraded:
            return
        if reason is None:
            log.warning("store: commits succeed again; no longer degraded")
        else:
            log.error("store degraded: %s; writes fail with 503 until a commit succeeds", reason)
        self._degraded = reason

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
            if writes:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('revision', ?) ON CONFLICT(key) "
                    "DO UPDATE SET value=max(CAST(value AS INTEGER), excluded.value)",
                    (str(top),),
                )
            else:  # the recovery probe: a real write, so a full disk fails it
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('probed_at', ?)",
                    (str(self.clock()),),
                )
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on SQLITE_FULL and some I/O errors; a
            # second ROLLBACK would raise "no transaction is active" and hide
            # the real cause.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
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
            # Each expiry is logged by the change log (dnsreg.changes), as every change is.
            try:
                await self.expire_now()
            except Unavailable:  # degraded (logged by the writer): retry once a second
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("store: lease expiry failed")
                await asyncio.sleep(0.1)
                continue
