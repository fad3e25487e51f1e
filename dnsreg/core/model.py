"""What the registry holds: registrations, their checks, and their runtime state.

Everything here is an immutable value; the registry swaps whole values, so a
reader (the DNS side) never sees a half-updated instance.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Protocol = Literal["tcp", "udp"]
CheckKind = Literal["http", "tcp", "ttl"]
CHECK_KINDS: tuple[CheckKind, ...] = ("http", "tcp", "ttl")

DEFAULT_LEASE_TTL = 30.0
MIN_LEASE_TTL = 1.0
MAX_LEASE_TTL = 24 * 3600.0
DEFAULT_DNS_TTL = 5


class Health(enum.Enum):
    """Health of an instance: the worst of its checks (passing < warning < critical)."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def served(self) -> bool:
        return self is not Health.CRITICAL

    @property
    def rank(self) -> int:
        return _HEALTH_RANK[self]


_HEALTH_RANK = {Health.PASSING: 0, Health.WARNING: 1, Health.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Check:
    """One health check of an instance, as registered.

    ``http`` and ``tcp`` checks are probed by the server every ``interval``.
    A ``ttl`` check is the other way round (Consul's TTL checks): the service
    reports its own state, and the check turns critical when no report came
    within ``interval`` seconds (its TTL); ``target`` then holds the TTL as the
    client wrote it. ``id`` and ``name`` are the check's Consul ``CheckID`` and
    ``Name`` when it was registered through the Consul API.
    """

    kind: CheckKind
    target: str
    interval: float = 10.0
    timeout: float = 2.0
    rise: int = 1
    fall: int = 2
    deregister_after: float | None = None
    id: str | None = None
    name: str | None = None
    #: Set at registration when the target's host is a name that had to resolve to
    #: the instance (SPEC §7): the checker connects here instead of resolving the
    #: name again, so a DNS answer that changes later (rebinding) cannot move the
    #: check to another host. The name still goes in Host and TLS SNI.
    connect_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            self.kind: self.target,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
            "deregister_after": self.deregister_after,
        }
        if self.id is not None:
            out["id"] = self.id
        if self.name is not None:
            out["name"] = self.name
        if self.connect_to is not None:
            out["connect_to"] = self.connect_to
        return out


@dataclass(frozen=True, slots=True)
class Deregistration:
    """A request to remove one instance, as a step of a batch (a DNS UPDATE)."""

    service: str
    id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.id)


@dataclass(frozen=True, slots=True)
class Registration:
    """What a client asked for: the identity and the DNS-facing data of an instance."""

    service: str
    id: str
    address: IPAddress
    port: int
    proto: Protocol = "tcp"
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    priority: int = 0
    ttl: float = DEFAULT_LEASE_TTL  # lease; 0 means no lease
    dns_ttl: int = DEFAULT_DNS_TTL
    checks: tuple[Check, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.id)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "id": self.id,
            "address": str(self.address),
            "port": self.port,
            "proto": self.proto,
            "tags": list(self.tags),
            "meta": dict(self.meta),
            "weight": self.weight,
            "priority": self.priority,
            "ttl": self.ttl,
            "dns_ttl": self.dns_ttl,
            "checks": [c.to_json() for c in self.checks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        """Inverse of :meth:`to_json`, for rows the store wrote itself."""
        checks = []
        for c in data.get("checks", []):
            kind = next(k for k in CHECK_KINDS if k in c)
            checks.append(
                Check(
                    kind=kind,
                    target=c[kind],
                    interval=c["interval"],
                    timeout=c["timeout"],
                    rise=c["rise"],
                    fall=c["fall"],
                    deregister_after=c.get("deregister_after"),
                    id=c.get("id"),
                    name=c.get("name"),
                    connect_to=c.get("connect_to"),
                )
            )
        return cls(
            service=data["service"],
            id=data["id"],
            address=ipaddress.ip_address(data["address"]),
            port=data["port"],
            proto=data["proto"],
            tags=tuple(data["tags"]),
            meta=tuple(sorted(data["meta"].items())),
            weight=data["weight"],
            priority=data["priority"],
            ttl=data["ttl"],
            dns_ttl=data["dns_ttl"],
            checks=tuple(checks),
        )


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """What is known about one check: its state and its latest result.

    ``state`` is what DNS acts on; ``last_result`` is what the last run found
    (they differ while ``rise``/``fall`` are still counting). ``consecutive``
    counts results in a row on the same side (ok or failing) as the last one.
    A check starts critical and "not run yet" (SPEC §4: served once it passes).
    """

    state: Health = Health.CRITICAL
    output: str = "not run yet"
    consecutive: int = 0
    last_run: float | None = None
    last_duration: float | None = None
    critical_since: float | None = None
    last_result: Health | None = None

    @property
    def pending(self) -> bool:
        """Never run: the state is a default, not a finding."""
        return self.last_run is None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "last_result": self.last_result.value if self.last_result is not None else None,
            "output": self.output,
            "consecutive": self.consecutive,
            "last_run": self.last_run,
            "last_duration": self.last_duration,
            "critical_since": self.critical_since,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckStatus:
        last_result = data.get("last_result")
        return cls(
            state=Health(data["state"]),
            output=data["output"],
            consecutive=data["consecutive"],
            last_run=data.get("last_run"),
            last_duration=data.get("last_duration"),
            critical_since=data.get("critical_since"),
            last_result=Health(last_result) if last_result is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Instance:
    """A registration plus the state the registry keeps for it."""

    reg: Registration
    deadline: float | None  # lease deadline (wall clock seconds); None: no lease
    registered_at: float
    revision: int  # the registry revision of the last change to this instance
    checks: tuple[CheckStatus, ...] = ()
    maintenance: str | None = None  # reason, when in maintenance
    #: The lease was renewed (heartbeat or re-registration) at least once since it
    #: was granted. Only such leases count toward self-preservation (SPEC §7): a
    #: burst of throw-away registrations that never renew must not pause expiry.
    renewed: bool = False

    @property
    def health(self) -> Health:
        """Worst of the checks; an instance without checks is passing."""
        worst = Health.PASSING
        for status in self.checks:
            if status.state.rank > worst.rank:
                worst = status.state
        return worst

    @property
    def served(self) -> bool:
        """Healthy enough for DNS and not in maintenance (lease liveness is the registry's)."""
        return self.maintenance is None and self.health.served

    @property
    def judged(self) -> bool:
        """Its health is a finding: not withdrawn on purpose, and its checks have run.
        What panic mode serves, and what the panic verdict counts."""
        return self.maintenance is None and not self.pending

    @property
    def pending(self) -> bool:
        """Some check has not run yet: its health is a default, not a finding."""
        return any(status.pending for status in self.checks)

    def with_changes(self, **changes: Any) -> Instance:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = self.reg.to_json()
        out.update(
            {
                "health": self.health.value,
                "served": self.served,
                "lease_deadline": self.deadline,
                "registered_at": self.registered_at,
                "revision": self.revision,
                "maintenance": (
                    {"enabled": True, "reason": self.maintenance}
                    if self.maintenance is not None
                    else {"enabled": False}
                ),
                "check_status": [
                    {"kind": check.kind, "target": check.target, **status.to_json()}
                    for check, status in zip(self.reg.checks, self.checks, strict=False)
                ],
            }
        )
        return out


#: One step of an all-or-nothing batch of writes (``Store.apply``).
Write = Registration | Deregistration
