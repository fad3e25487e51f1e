"""The store interface: every change to the registry flows through a store.

A store owns durability and leases. Writes go through it; it applies each
change to the in-memory :class:`~dnsreg.core.registry.Registry` (the view DNS
answers from) and returns only once the change is durable. A distributed
store applies changes it learns from its backend's change stream the same
way, so DNS never reads the backend per query.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dnsreg.core.errors import Unavailable
from dnsreg.core.model import CheckStatus, Instance, Registration, Write
from dnsreg.core.preservation import ExpiryGuard
from dnsreg.core.registry import Change, Registry

log = logging.getLogger("dnsreg.store")

Listener = Callable[[Change], None]
StaleListener = Callable[[bool], None]


class Store(abc.ABC):
    """Durable home of the registry's state."""

    #: Short name for logs and /v1/status.
    kind: str = "?"
    #: Seconds without contact with a remote backend before answers are marked
    #: stale (config ``stale_after``). An embedded store is never stale.
    stale_after: float = 10.0

    def __init__(self, registry: Registry, clock: Callable[[], float]) -> None:
        self.registry = registry
        self.clock = clock
        #: Called with the seconds each successful commit to the backend took (one
        #: group commit, one etcd txn): the store commit latency metric.
        self.commit_observer: Callable[[float], None] | None = None
        self._listeners: list[Listener] = []
        self._membership_listeners: list[Callable[[], None]] = []
        self._stale_listeners: list[StaleListener] = []

    # -------------------------------------------------------- change fan-out
    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every change, right after the registry has it."""
        self._listeners.append(listener)

    def _publish(self, change: Change) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # a broken listener must not lose the change for the others
                log.exception("change listener failed on revision %d", change.revision)

    # ------------------------------------------- shared registries (several nodes)
    def owns_check(self, service: str, instance_id: str) -> bool:
        """Whether this node runs the health checks of that instance (a lone node: always)."""
        return True

    def subscribe_membership(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the set of live nodes (so :meth:`owns_check`) may change."""
        self._membership_listeners.append(listener)

    def _membership_changed(self) -> None:
        for listener in self._membership_listeners:
            try:
                listener()
            except Exception:
                log.exception("membership listener failed")

    @property
    def stale(self) -> bool:
        """True while the registry may be out of date (backend unreachable for ``stale_after``)."""
        return False

    @property
    def degraded(self) -> str | None:
        """Why the store cannot be trusted right now (writes fail, or the backend is
        out of reach), for /v1/status; None while all is well."""
        if self.stale:
            return f"{self.kind} unreachable: answers may be out of date"
        return None

    def subscribe_stale(self, listener: StaleListener) -> None:
        """Call ``listener(stale)`` whenever :attr:`stale` flips."""
        self._stale_listeners.append(listener)

    def _stale_changed(self, stale: bool) -> None:
        for listener in self._stale_listeners:
            try:
                listener(stale)
            except Exception:
                log.exception("stale listener failed")

    # -------------------------------------------------------------- lifecycle
    @abc.abstractmethod
    async def start(self) -> None:
        """Load the stored state into the registry and start background work."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and flush every acknowledged write."""

    # ----------------------------------------------------------------- writes
    @abc.abstractmethod
    async def register(self, reg: Registration) -> Change: ...

    @abc.abstractmethod
    async def heartbeat(self, service: str, instance_id: str) -> Instance: ...

    @abc.abstractmethod
    async def deregister(self, service: str, instance_id: str) -> Change: ...

    @abc.abstractmethod
    async def apply(self, writes: Sequence[Write]) -> list[Change]:
        """Several registrations and deregistrations, all or none (a DNS UPDATE).

        Durable before it returns, like every write. If any write is refused
        (Conflict, NotFound) or the commit fails, nothing changed: no instance,
        no revision, no event.
        """

    @abc.abstractmethod
    async def set_maintenance(
        self, service: str, instance_id: str, reason: str | None
    ) -> Change | None: ...

    @abc.abstractmethod
    async def record_check(
        self, service: str, instance_id: str, index: int, status: CheckStatus
    ) -> Change | None: ...

    # ----------------------------------------------------------------- backup
    async def backup(self, target: Path) -> None:
        """Write a consistent snapshot of the store to ``target`` (a new file)."""
        raise Unavailable(
            f"the {self.kind} store is not backed up through dnsreg: back up its backend "
            "(for etcd: etcdctl snapshot save, see docs/operations.md)"
        )

    # ----------------------------------------------------------------- status
    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    #: Self-preservation (SPEC §3), set by the server before :meth:`start`. A
    #: store that expires leases itself consults it; None: the store has no
    #: lease expiry of its own to pause (its backend owns the leases).
    expiry_guard: ExpiryGuard | None = None

    def self_preservation(self) -> dict[str, Any]:
        """The guard's state for /v1/status and /metrics; a store that runs its
        own lease expiry and consults the guard says so by overriding this."""
        return {"enabled": False, "active": False}


def instance_to_row(instance: Instance) -> dict[str, Any]:
    """What survives a restart: everything but the lease deadline (renewed on load)."""
    return {
        "reg": instance.reg.to_json(),
        "registered_at": instance.registered_at,
        "revision": instance.revision,
        "maintenance": instance.maintenance,
        "checks": [c.to_json() for c in instance.checks],
    }


def instance_from_row(row: dict[str, Any]) -> Instance:
    return Instance(
        reg=Registration.from_json(row["reg"]),
        deadline=None,
        registered_at=row["registered_at"],
        revision=row["revision"],
        maintenance=row.get("maintenance"),
        checks=tuple(CheckStatus.from_json(c) for c in row.get("checks", [])),
    )
