"""The etcd store: several dnsreg nodes share one registry kept in etcd.

URL: ``etcd://host:port[,host:port...]/prefix``, or ``etcds://`` for TLS to etcd
(with the ``etcd_*`` settings of :mod:`dnsreg.store.etcd_options`).

- Every instance is one key; its lease TTL is an etcd lease. A heartbeat to
  any node renews that lease; when no node renews it, etcd itself deletes the
  key on time, even if every dnsreg node is down.
- Each node answers DNS from its local :class:`~dnsreg.core.registry.Registry`,
  a mirror fed by one etcd watch over the prefix. Changes reach the mirror, and
  the subscribers, only through that watch, in etcd revision order; the
  registry revision *is* the etcd revision, so it (and the SOA serial) is the
  same on every node once they have seen the same changes.
- A write returns only after this node's mirror has seen the write's revision
  (read-your-writes: DNS on the node that took the write answers it at once).
- Nodes announce themselves with a key on a short node lease; health checks of
  an instance run on the node that rendezvous hashing picks among live nodes.
- When etcd cannot be reached, DNS goes on answering from the mirror; after
  ``stale_after`` without contact the store reports itself stale (answers get
  the RFC 8914 "Stale Answer" EDE) and writes fail at once with
  :class:`~dnsreg.core.errors.Unavailable`. On reconnection the watch resumes at the
  last applied revision + 1, or, if that history was compacted, the node lists
  everything again and applies the difference.

The session (watch + node lease) is bound to one endpoint at a time: a
keepalive of the node lease on that endpoint every second is both the node's
membership heartbeat and the liveness probe of the member the watch rides on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dnsreg.core.errors import ConfigError, Conflict, DnsregError, NotFound, Unavailable
from dnsreg.core.model import CheckStatus, Instance, Registration, Write
from dnsreg.core.registry import Change, Registry
from dnsreg.store.base import Store
from dnsreg.store.etcd_client import (
    Ambiguous,
    EtcdError,
)
from dnsreg.store.etcd_codec import (
    Layout,
    Op,
    Stored,
    b64,
    checks_for,
    decode_cause,
    encode_cause,
)
from dnsreg.store.etcd_mirror import CAS_ATTEMPTS, EtcdMirror
from dnsreg.store.etcd_options import EtcdOptions

log = logging.getLogger("dnsreg.store.etcd")


def create(
    url: str,
    *,
    data_dir: Path,
    registry: Registry,
    clock: Callable[[], float],
    options: EtcdOptions | None = None,
) -> Store:
    endpoints, prefix = parse_url(url)
    options = replace(options or EtcdOptions(), tls=endpoints[0].startswith("https://"))
    return EtcdStore(endpoints, prefix, registry, clock, options=options)


def parse_url(url: str) -> tuple[list[str], str]:
    """``etcd://h1:p1,h2:p2/prefix`` → (["http://h1:p1", ...], "/prefix/").

    ``etcds://`` gives ``https://`` endpoints: TLS to etcd's client port.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "etcds") or not parts.netloc:
        raise ConfigError(
            f"store {url!r}: expected etcd://host:port[,host:port...]/prefix (or etcds://)"
        )
    if "@" in parts.netloc:
        # Never echo this URL: it holds a password.
        raise ConfigError(
            "store: credentials do not go in the etcd URL; use etcd_user and etcd_password"
        )
    scheme = "https" if parts.scheme == "etcds" else "http"
    endpoints = []
    for item in parts.netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"store {url!r}: {item!r} is not host:port")
        endpoints.append(f"{scheme}://{host}:{port}")
    return endpoints, Layout.from_path(parts.path).prefix


class EtcdStore(EtcdMirror):
    """Writes: every change is an etcd transaction, acknowledged once the mirror has it."""

    # ----------------------------------------------------------------- writes
    def _writable(self) -> None:
        if self._stale:
            raise Unavailable(
                f"etcd is unreachable (no contact for "
                f"{time.monotonic() - self._last_contact:.0f}s via "
                f"{', '.join(self.client.endpoints)}); writes are refused until it is back"
            )

    def _unreachable(self, exc: EtcdError) -> Unavailable:
        return Unavailable(f"etcd is unreachable: {exc.message}")

    def _stored(
        self, reg: Registration, before: Instance | None, token: str, lease_ttl: int
    ) -> Stored:
        """What a registration writes: a replacement keeps the registration time,
        maintenance and check states of the instance it replaces."""
        return Stored(
            reg=reg,
            registered_at=before.registered_at if before is not None else self.clock(),
            op="register",
            token=token,
            lease_ttl=lease_ttl,
            maintenance=before.maintenance if before is not None else None,
            checks=checks_for(reg, before),
        )

    async def register(self, reg: Registration) -> Change:
        self._writable()
        self.registry.validate(reg)
        before = self.registry.get(reg.service, reg.id)
        old_lease = self._leases.get(reg.key, (0, 0))[0]
        key = self.layout.instance_key(reg.service, reg.id)
        try:
            lease, granted = 0, 0
            if reg.ttl > 0:
                lease, granted = await self.client.grant(max(1, math.ceil(reg.ttl)))
            stored = self._stored(reg, before, secrets.token_hex(8), granted)
            put = _put(key, stored, lease)
            # The names a tag would shadow must not exist (SPEC §1): checked in the
            # txn itself, so two nodes cannot race past each other's validation.
            tag_keys = [self.layout.instance_key(reg.service, t) for t in reg.tags]
            compare = [
                {"target": "CREATE", "key": b64(k), "result": "EQUAL", "create_revision": 0}
                for k in tag_keys
            ]
            failure = [{"request_range": {"key": b64(k)}} for k in tag_keys]
            with self._collect(reg.service, reg.id) as seen:
                revision = await self._write(
                    key, stored.token, compare, [{"request_put": put}], failure
                )
                if revision is None:
                    if lease:
                        self._revoke_later(lease)
                    raise Conflict(
                        f"a tag of {reg.id!r} equals the id of another instance of {reg.service!r}",
                        field="tags",
                    )
                await self._reach(revision)
                change = self._change_at(seen, revision, reg.service, reg.id)
        except EtcdError as exc:
            raise self._unreachable(exc) from exc
        if old_lease and old_lease != lease:
            self._revoke_later(old_lease)  # the key moved to the new lease
        return change

    async def apply(self, writes: Sequence[Write]) -> list[Change]:
        """One etcd txn for the whole batch, so one etcd revision (the registry
        revision is etcd's): every instance key is compared and written in it, and
        a failed compare (a tag taken, an instance to delete already gone) or a
        failed txn changes nothing."""
        self._writable()
        writes = list(writes)
        if not writes:
            return []
        token = secrets.token_hex(8)
        compare: list[dict[str, Any]] = []
        success: list[dict[str, Any]] = []
        granted_leases: list[int] = []
        old_leases: list[int] = []
        deregistered: list[tuple[str, str]] = []
        try:
            for w in writes:
                key = self.layout.instance_key(w.service, w.id)
                old = self._leases.get(w.key, (0, 0))[0]
                if old:
                    old_leases.append(old)
                if not isinstance(w, Registration):
                    compare.append(
                        {"target": "VERSION", "key": b64(key), "result": "GREATER", "version": 0}
                    )
                    success.append({"request_delete_range": {"key": b64(key)}})
                    deregistered.append(w.key)
                    continue
                self.registry.validate(w)
                before = self.registry.get(w.service, w.id)
                lease, granted = 0, 0
                if w.ttl > 0:
                    lease, granted = await self.client.grant(max(1, math.ceil(w.ttl)))
                    granted_leases.append(lease)
                stored = self._stored(w, before, token, granted)
                put = _put(key, stored, lease)
                success.append({"request_put": put})
                compare.extend(
                    {"target": "CREATE", "key": b64(self.layout.instance_key(w.service, t)),
                     "result": "EQUAL", "create_revision": 0}
                    for t in w.tags
                )  # fmt: skip
            first = writes[0]
            token_key: bytes | None = None
            if deregistered:
                (service, instance_id), *also = deregistered
                cause = encode_cause(service, instance_id, token, also)
                success.append({"request_put": {"key": b64(self.layout.cause_key),
                                                "value": b64(cause)}})  # fmt: skip
                token_key = self.layout.cause_key
            with contextlib.ExitStack() as stack:
                seen = [stack.enter_context(self._collect(w.service, w.id)) for w in writes]
                revision = await self._write(
                    self.layout.instance_key(first.service, first.id),
                    token, compare, success, [], token_key=token_key,
                )  # fmt: skip
                if revision is None:
                    raise Conflict(
                        "the update no longer matches what etcd holds (an instance to delete "
                        "is gone, or a tag equals another instance's id); nothing changed"
                    )
                await self._reach(revision)
                changes = [
                    self._change_at(s, revision, w.service, w.id)
                    for s, w in zip(seen, writes, strict=True)
                ]
        except (EtcdError, DnsregError) as exc:
            for lease in granted_leases:
                self._revoke_later(lease)  # nothing uses them now
            if isinstance(exc, EtcdError):
                raise self._unreachable(exc) from exc
            raise
        for lease in old_leases:
            self._revoke_later(lease)  # the keys moved to new leases, or are gone
        return changes

    async def _write(
        self,
        key: bytes,
        token: str,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
        *,
        token_key: bytes | None = None,
    ) -> int | None:
        """Run a txn that writes ``token`` into ``token_key`` (default ``key``), once.

        Returns the revision it committed at, or None when ``compare`` failed.
        After an ambiguous failure it reads the key back: finding its own
        token means the first attempt committed, so it is not written twice.
        """
        check_key = token_key or key
        deadline = time.monotonic() + self.client.budget
        ambiguous = False

        async def committed_earlier() -> int | None:
            found = await self.client.range(check_key, budget=max(0.1, deadline - time.monotonic()))
            for kv in found.kvs:
                if _token_of(kv.value, cause=token_key is not None) == token:
                    return kv.mod_revision
            return None

        while True:
            started = time.perf_counter()
            try:
                result = await self.client.txn(
                    compare, success, failure, budget=max(0.1, deadline - time.monotonic())
                )
            except Ambiguous:
                ambiguous = True
                revision = await committed_earlier()
                if revision is not None:
                    return revision
                if time.monotonic() >= deadline:
                    raise
                continue
            if result.succeeded:
                if self.commit_observer is not None:
                    self.commit_observer(time.perf_counter() - started)
                return result.revision
            # The compare failed: perhaps because our own earlier attempt landed late.
            return await committed_earlier() if ambiguous else None

    async def deregister(self, service: str, instance_id: str) -> Change:
        self._writable()
        key = self.layout.instance_key(service, instance_id)
        token = secrets.token_hex(8)
        lease = self._leases.get((service, instance_id), (0, 0))[0]
        cause = {"key": b64(self.layout.cause_key),
                 "value": b64(encode_cause(service, instance_id, token))}  # fmt: skip
        try:
            with self._collect(service, instance_id) as seen:
                revision = await self._write(
                    key,
                    token,
                    [{"target": "VERSION", "key": b64(key), "result": "GREATER", "version": 0}],
                    [{"request_delete_range": {"key": b64(key)}}, {"request_put": cause}],
                    [],
                    token_key=self.layout.cause_key,
                )
                if revision is None:
                    raise NotFound(
                        f"instance {instance_id!r} of service {service!r} is not registered"
                    )
                await self._reach(revision)
                change = self._change_at(seen, revision, service, instance_id)
        except EtcdError as exc:
            raise self._unreachable(exc) from exc
        if lease:
            self._revoke_later(lease)
        return change

    async def heartbeat(self, service: str, instance_id: str) -> Instance:
        self._writable()
        instance = self.registry.get(service, instance_id)
        if instance is not None and instance.reg.ttl <= 0:
            return instance  # no lease to renew
        lease = self._leases.get((service, instance_id), (0, 0))[0]
        try:
            ttl = await self.client.keepalive(lease) if lease else 0
            if ttl <= 0:
                # Not in this node's mirror yet (registered through another node a
                # moment ago), or re-registered there on a new lease: ask etcd.
                found = await self.client.range(self.layout.instance_key(service, instance_id))
                if not found.kvs:
                    raise NotFound(
                        f"instance {instance_id!r} of service {service!r} is not registered "
                        "(or its lease expired); register again"
                    )
                kv = found.kvs[0]
                instance = Stored.decode(kv.value).to_instance(kv.mod_revision, self.clock())
                if not kv.lease:
                    return instance  # ttl 0: nothing to renew
                ttl = await self.client.keepalive(kv.lease)
                if ttl <= 0:
                    raise NotFound(
                        f"the lease of {instance_id!r} of service {service!r} has expired; "
                        "register again"
                    )
        except EtcdError as exc:
            raise self._unreachable(exc) from exc
        if self.registry.get(service, instance_id) is not None:
            return self.registry.heartbeat(service, instance_id, self.clock())
        assert instance is not None
        return instance.with_changes(deadline=self.clock() + ttl)

    async def set_maintenance(
        self, service: str, instance_id: str, reason: str | None
    ) -> Change | None:
        def edit(current: Instance) -> Instance | None:
            if current.maintenance == reason:
                return None
            return current.with_changes(maintenance=reason)

        return await self._update(service, instance_id, "maintenance", edit)

    async def record_check(
        self, service: str, instance_id: str, index: int, status: CheckStatus
    ) -> Change | None:
        current = self.registry.require(service, instance_id)
        if index >= len(current.checks):
            return None  # replaced with fewer checks meanwhile
        # A TTL check's report is shared even when its state stays: it may reach
        # any node, but the node that owns the check is the one that expires it.
        shared = current.reg.checks[index].kind == "ttl"
        if current.checks[index].state is status.state and not shared:
            # Same state: refresh this node's copy only. Writing every result to
            # etcd would cost a revision per check run on every node; only
            # transitions (what DNS and watchers see) are shared.
            self.registry.set_check_status(service, instance_id, index, status)
            return None

        def edit(now: Instance) -> Instance | None:
            if index >= len(now.checks) or (now.checks[index].state is status.state and not shared):
                return None
            checks = list(now.checks)
            checks[index] = status
            return now.with_changes(checks=tuple(checks))

        return await self._update(service, instance_id, "health", edit)

    async def _update(
        self,
        service: str,
        instance_id: str,
        op: Op,
        edit: Callable[[Instance], Instance | None],
    ) -> Change | None:
        """Read-modify-write of one instance, keeping its lease (compare-and-swap on etcd)."""
        self._writable()
        current = self.registry.require(service, instance_id)
        key = self.layout.instance_key(service, instance_id)
        try:
            with self._collect(service, instance_id) as seen:
                for _ in range(CAS_ATTEMPTS):
                    wanted = edit(current)
                    if wanted is None:
                        return None
                    granted = self._leases.get((service, instance_id), (0, 0))[1]
                    stored = Stored.of(wanted, op=op, token=secrets.token_hex(8), lease_ttl=granted)
                    put = {"key": b64(key), "value": b64(stored.encode()), "ignore_lease": True}
                    compare = [{"target": "MOD", "key": b64(key), "result": "EQUAL",
                                "mod_revision": current.revision}]  # fmt: skip
                    revision = await self._write(
                        key, stored.token, compare, [{"request_put": put}], []
                    )
                    if revision is not None:
                        await self._reach(revision)
                        return self._change_at(seen, revision, service, instance_id)
                    # Someone wrote in between: read what etcd holds now and redo the edit.
                    found = await self.client.range(key)
                    if not found.kvs:
                        raise NotFound(
                            f"instance {instance_id!r} of service {service!r} is not registered"
                        )
                    kv = found.kvs[0]
                    current = Stored.decode(kv.value).to_instance(kv.mod_revision, self.clock())
        except EtcdError as exc:
            raise self._unreachable(exc) from exc
        raise Unavailable(
            f"instance {instance_id!r} of {service!r} kept changing; gave up after "
            f"{CAS_ATTEMPTS} attempts"
        )

    def _revoke_later(self, lease: int) -> None:
        """Best effort: a lease with no key left only wastes etcd memory until its TTL ends."""

        async def revoke() -> None:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease, budget=2.0)

        task = asyncio.get_running_loop().create_task(revoke())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _token_of(raw: bytes, *, cause: bool) -> str | None:
    if cause:
        parsed = decode_cause(raw)
        return parsed[2] if parsed is not None else None
    try:
        return Stored.decode(raw).token
    except ValueError:
        return None


def _put(key: bytes, stored: Stored, lease: int) -> dict[str, Any]:
    """An etcd ``put`` of ``stored`` at ``key``, attached to ``lease`` (0: none)."""
    put: dict[str, Any] = {"key": b64(key), "value": b64(stored.encode())}
    if lease:
        put["lease"] = lease
    return put
