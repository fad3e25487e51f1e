"""The etcd store's follower half: the session, the watch, and the local mirror.

Each node answers DNS from its local :class:`~dnsreg.core.registry.Registry`, a
mirror fed by one etcd watch over the prefix. This module keeps that mirror: it
joins (a node key on a short lease), rides one endpoint's watch, applies events
in etcd revision order, resynchronises after compaction, tracks contact and
staleness, and lets writers wait until the mirror has seen their revision.
The writes themselves are :mod:`dnsreg.store.etcd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from dnsreg.core.errors import ConfigError, Unavailable
from dnsreg.core.registry import Change, ChangeKind, Registry
from dnsreg.store.base import Store
from dnsreg.store.etcd_auth import PERMISSION_DENIED
from dnsreg.store.etcd_client import (
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdRefused,
    EtcdUnavailable,
)
from dnsreg.store.etcd_codec import (
    Delta,
    Event,
    Layout,
    b64,
    changes_for_revision,
    encode_node,
    group_by_revision,
    rendezvous_owner,
    resync_changes,
    snapshot,
)
from dnsreg.store.etcd_options import EtcdOptions

log = logging.getLogger("dnsreg.store.etcd")

NODE_TTL = 3  # seconds: a crashed node's checks move within this (+ etcd's expiry tick)
PROBE_INTERVAL = 1.0  # node-lease keepalive on the watch's endpoint
PROBE_TIMEOUT = 1.0
START_BUDGET = 10.0  # how long start() tries to reach etcd before giving up
CAS_ATTEMPTS = 8  # read-modify-write retries when another node wrote in between


class EtcdMirror(Store):
    """The follower half of the etcd store: membership, the watch, the mirror, waiting.

    :class:`~dnsreg.store.etcd.EtcdStore` adds the writes.
    """

    kind = "etcd"

    def __init__(
        self,
        endpoints: list[str],
        prefix: str,
        registry: Registry,
        clock: Callable[[], float],
        *,
        options: EtcdOptions | None = None,
    ) -> None:
        super().__init__(registry, clock)
        self.layout = Layout(prefix)
        options = options or EtcdOptions()
        self.client = EtcdClient(
            endpoints,
            on_contact=self._contact,
            tls=options.ssl_context(),
            credentials=options.credentials,
        )
        host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
        self.node_id = f"{host or 'node'}-{os.getpid()}-{secrets.token_hex(3)}"
        self.nodes: dict[str, bytes] = {}
        self._node_lease = 0
        # (etcd lease id, granted TTL) per instance; lease 0 for ttl=0 instances.
        self._leases: dict[tuple[str, str], tuple[int, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._applied = 0  # last etcd revision the mirror has applied
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # heap by revision
        self._waiter_seq = 0
        self._collectors: dict[tuple[str, str], list[list[Change]]] = {}
        self._session_task: asyncio.Task[None] | None = None
        self._closing = False
        # Contact: loop time of the last answer from etcd, and whether the watch is up.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._last_contact = time.monotonic()
        self._stale = False
        self._stale_timer: asyncio.TimerHandle | None = None
        self._last_error: str | None = None
        self._resyncs = 0

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.client.start()
        deadline = time.monotonic() + START_BUDGET
        while True:
            try:
                await self._resync()
                await self._join()
                break
            except EtcdRefused as exc:
                # Bad credentials, no permission, an untrusted certificate: waiting
                # will not fix the settings, so say so at once.
                await self.client.close()
                where = f" {self.layout.prefix}" if exc.code == PERMISSION_DENIED else ""
                raise ConfigError(exc.message + where) from exc
            except (EtcdError, OSError) as exc:
                if time.monotonic() >= deadline:
                    await self.client.close()
                    raise Unavailable(
                        f"etcd is unreachable at {', '.join(self.client.endpoints)}: {exc}"
                    ) from exc
                await asyncio.sleep(0.2)
        self._connected = True
        log.info(
            "store: etcd at %s, prefix %s, node %s: %d instance(s) at revision %d, %d node(s)",
            ",".join(self.client.endpoints),
            self.layout.prefix,
            self.node_id,
            len(self.registry),
            self._applied,
            len(self.nodes),
        )
        self._session_task = asyncio.create_task(self._session(), name="etcd-session")

    async def close(self) -> None:
        self._closing = True
        if self._stale_timer is not None:
            self._stale_timer.cancel()
        if self._session_task is not None:
            self._session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session_task
        if self._node_lease:
            # Leave at once, so the other nodes take over this node's checks now.
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self._node_lease, budget=1.0)
            self._node_lease = 0
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, EtcdError):
                await task
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(Unavailable("the store is closing"))
        self._waiters.clear()
        await self.client.close()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoints": self.client.endpoints,
            "endpoint": self.client.current,
            "prefix": self.layout.prefix,
            "node": self.node_id,
            "nodes": sorted(self.nodes),
            "connected": self._connected,
            "stale": self._stale,
            "stale_after": self.stale_after,
            "seconds_since_contact": round(time.monotonic() - self._last_contact, 3),
            "revision": self._applied,
            "resyncs": self._resyncs,
            "last_error": self._last_error,
        }

    # ---------------------------------------------------- membership, staleness
    def owns_check(self, service: str, instance_id: str) -> bool:
        owner = rendezvous_owner(self.nodes or (self.node_id,), service, instance_id)
        return owner == self.node_id

    @property
    def stale(self) -> bool:
        return self._stale

    def _contact(self) -> None:
        self._last_contact = time.monotonic()

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        if error is not None:
            self._last_error = error
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            log.info("etcd: connected via %s at revision %d", self.client.current, self._applied)
            if self._stale_timer is not None:
                self._stale_timer.cancel()
                self._stale_timer = None
            self._set_stale(False)
            return
        log.warning("etcd: lost contact (%s); DNS answers from the mirror", error)
        if self._loop is not None and not self._closing:
            when = self._loop.time() + max(
                0.0, self._last_contact + self.stale_after - time.monotonic()
            )
            self._stale_timer = self._loop.call_at(when, self._stale_due)

    def _stale_due(self) -> None:
        self._stale_timer = None
        if self._connected or self._closing:
            return
        late = self._last_contact + self.stale_after - time.monotonic()
        if late > 0 and self._loop is not None:  # a late answer moved the contact time on
            self._stale_timer = self._loop.call_later(late, self._stale_due)
            return
        self._set_stale(True)

    def _set_stale(self, stale: bool) -> None:
        if stale == self._stale:
            return
        self._stale = stale
        if stale:
            log.error(
                "etcd unreachable for %.1fs: answers are now marked stale, writes refused",
                time.monotonic() - self._last_contact,
            )
        else:
            log.info("etcd reachable again: answers are current")
        self._stale_changed(stale)

    # ---------------------------------------------------------------- session
    async def _join(self) -> None:
        """Hold a node lease and this node's key on it (membership for check placement)."""
        if not self._node_lease:
            lease, _ = await self.client.grant(NODE_TTL, budget=2.0)
            self._node_lease = lease
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": self.clock()}
        await self.client.call(
            "/v3/kv/put",
            {"key": b64(self.layout.node_key(self.node_id)), "value": b64(encode_node(info)),
             "lease": self._node_lease},
            budget=2.0,
        )  # fmt: skip

    async def _session(self) -> None:
        backoff = 0.05
        while not self._closing:
            endpoint = self.client.current
            try:
                await self._ride(endpoint)
            except asyncio.CancelledError:
                raise
            except Compacted as exc:
                log.warning("etcd: watch history compacted (%s): listing again", exc.message)
                self._set_connected(False, exc.message)
                try:
                    await self._resync()
                except (EtcdError, OSError) as again:
                    self._set_connected(False, str(again))
                    self.client.rotate(endpoint)
                    await asyncio.sleep(backoff)
                continue
            except (EtcdError, OSError) as exc:
                message = exc.message if isinstance(exc, EtcdError) else str(exc)
                if self._connected:
                    backoff = 0.05  # it worked until now: retry (elsewhere) at once
                self._set_connected(False, message)
                self.client.rotate(endpoint)
            except Exception:
                log.exception("etcd: session failed unexpectedly; reconnecting")
                self._set_connected(False, "internal error (see log)")
                self.client.rotate(endpoint)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def _ride(self, endpoint: str) -> None:
        """Watch from the last applied revision on ``endpoint``, probing it every second."""
        watch = asyncio.create_task(self._watch(endpoint), name="etcd-watch")
        try:
            while True:
                done, _ = await asyncio.wait({watch}, timeout=PROBE_INTERVAL)
                if done:
                    watch.result()  # raises why the watch ended
                    raise EtcdUnavailable(f"{endpoint}: watch ended")
                ttl = 0
                if self._node_lease:
                    ttl = await self.client.keepalive_on(
                        endpoint, self._node_lease, within=PROBE_TIMEOUT
                    )
                if ttl <= 0:
                    # Our node lease ran out while we were cut off: join again.
                    self._node_lease = 0
                    await self._join()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdError, OSError):
                await watch

    async def _watch(self, endpoint: str) -> None:
        start, end = self.layout.everything
        async for message in self.client.watch(endpoint, start, end, self._applied + 1):
            if message.created:
                # Any history since our last revision is replayed right after this.
                self._set_connected(True)
                continue
            self._apply_events(message.events)

    # ---------------------------------------------------------- applying state
    def _apply_events(self, events: list[Event]) -> None:
        for revision, group in group_by_revision(events):
            if revision <= self._applied:
                continue  # already applied (a resumed watch may repeat the edge)
            delta = changes_for_revision(
                self.layout, revision, group, self.registry.get, self.clock()
            )
            self._apply_delta(delta)

    def _apply_delta(self, delta: Delta) -> None:
        for key in delta.undecodable:
            log.error("etcd: ignoring %r: not a value dnsreg wrote", key)
        for instance_key, lease in delta.leases.items():
            if lease is None:
                self._leases.pop(instance_key, None)
            else:
                self._leases[instance_key] = lease
        for change in delta.changes:
            self._apply_change(change)
        membership = bool(delta.nodes_up.keys() - self.nodes.keys() or delta.nodes_down)
        self.nodes.update(delta.nodes_up)
        for node in delta.nodes_down:
            self.nodes.pop(node, None)
        self._advance(delta.revision, registry=bool(delta.changes))
        if membership:
            log.info("etcd: live nodes now %s", ", ".join(sorted(self.nodes)) or "none")
            self._membership_changed()

    def _apply_change(self, change: Change) -> None:
        self.registry.apply(change)
        for collector in self._collectors.get((change.service, change.id), ()):
            collector.append(change)
        self._publish(change)

    def _advance(self, revision: int, *, registry: bool) -> None:
        """The mirror has applied ``revision``: waiting writers wake.

        The registry revision moves only with a published change (``registry``):
        a node joining or leaving also bumps etcd's revision, but it is not a
        registry change, and a revision that moved without one would leave
        blocking queries and event streams (which follow the changes) behind it.
        """
        self._applied = max(self._applied, revision)
        if registry:
            self.registry.set_revision(revision)
        while self._waiters and self._waiters[0][0] <= self._applied:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    async def _resync(self) -> None:
        """List everything under the prefix and apply the difference to the mirror."""
        start, end = self.layout.everything
        result = await self.client.range_all(start, end)
        snap = snapshot(self.layout, result.revision, result.kvs, self.clock())
        for key in snap.undecodable:
            log.error("etcd: ignoring %r: not a value dnsreg wrote", key)
        changes = resync_changes(list(self.registry.all_instances()), snap)
        self._leases = dict(snap.leases)
        for change in changes:
            self._apply_change(change)
        membership = snap.nodes.keys() != self.nodes.keys()
        self.nodes = dict(snap.nodes)
        # The first listing sets the revision; a later one moves it only with changes.
        self._advance(snap.revision, registry=bool(changes) or self._resyncs == 0)
        self._resyncs += 1
        if changes:
            log.info(
                "etcd: resynchronised at revision %d: %d change(s)", snap.revision, len(changes)
            )
        if membership:
            self._membership_changed()

    # ----------------------------------------------------------------- waiting
    @contextlib.contextmanager
    def _collect(self, service: str, instance_id: str) -> Iterator[list[Change]]:
        """Gather the changes the mirror applies to one instance while a write is in flight."""
        seen: list[Change] = []
        key = (service, instance_id)
        self._collectors.setdefault(key, []).append(seen)
        try:
            yield seen
        finally:
            lists = self._collectors[key]
            lists.remove(seen)
            if not lists:
                del self._collectors[key]

    async def _reach(self, revision: int) -> None:
        """Wait until the mirror has applied ``revision`` (read-your-writes)."""
        if self._applied >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        heapq.heappush(self._waiters, (revision, self._waiter_seq, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=self.client.budget)
        except TimeoutError:
            raise Unavailable(
                f"etcd accepted the write (revision {revision}) but this node's view has not "
                f"caught up with it yet (etcd unreachable from here?); retry"
            ) from None

    def _change_at(
        self, seen: list[Change], revision: int, service: str, instance_id: str
    ) -> Change:
        for change in seen:
            if change.revision >= revision:
                return change
        # Not applied as its own change (e.g. folded into a resync): report the state now.
        after = self.registry.get(service, instance_id)
        kind = ChangeKind.REPLACED if after is not None else ChangeKind.DEREGISTERED
        return Change(kind, revision, service, instance_id, None, after)
