"""What a client asks to register, before it reaches the server. Pure.

The CLI flags, ``dnsreg run`` and the registrar's TOML files all become an
:class:`InstanceSpec`; the client turns it into the JSON body of
``PUT /v1/services/{svc}/instances/{id}``. Only the names (which become URL
path segments and DNS labels) and the lease are checked here, so a user gets
an error before any network traffic; everything else the server validates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dnsreg.core.durations import parse_duration
from dnsreg.core.errors import InvalidInput
from dnsreg.core.names import MAX_LABEL_OCTETS, check_label

# How often a lease keeper heartbeats: three chances before the lease runs out.
HEARTBEATS_PER_TTL = 3
# A lease of 0 never runs out; the keeper still checks now and then that the
# server has not lost the instance.
NO_LEASE_CHECK_INTERVAL = 30.0
DEFAULT_SERVER_TTL = 30.0  # what the server applies when a body gives no ttl (SPEC §3)


def default_instance_id(hostname: str, port: int) -> str:
    """``<first label of the host name>-<port>``, folded into a DNS label.

    Stable across restarts and unique per host and port, which is what an id
    needs so that a restarted process replaces its old registration instead of
    adding a second one.
    """
    suffix = f"-{port}"
    label = hostname.split(".", 1)[0].lower()
    label = re.sub(r"[^a-z0-9-]+", "-", label).strip("-")
    label = label[: MAX_LABEL_OCTETS - len(suffix)].rstrip("-") or "host"
    return label + suffix


def parse_meta(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a mapping."""
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"meta: {item!r} is not KEY=VALUE", field="meta")
        meta[key] = value
    return meta


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One instance to register. ``None`` fields are left to the server's defaults."""

    service: str
    id: str
    port: int
    address: str | None = None
    proto: str | None = None
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    weight: int | None = None
    priority: int | None = None
    ttl: float | str | None = None
    dns_ttl: float | str | None = None
    checks: tuple[Mapping[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "service", check_label(self.service, field="service"))
        object.__setattr__(self, "id", check_label(self.id, field="id"))
        object.__setattr__(
            self, "tags", tuple(check_label(t, field=f"tags[{n}]") for n, t in enumerate(self.tags))
        )
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise InvalidInput(f"port: {self.port!r} is not a number", field="port")
        if not 1 <= self.port <= 65535:
            raise InvalidInput(f"port: must be between 1 and 65535, got {self.port}", field="port")
        if self.ttl is not None:
            parse_duration(self.ttl, field="ttl")

    @classmethod
    def build(
        cls,
        service: str,
        id: str | None,
        *,
        port: int,
        hostname: str,
        meta: Mapping[str, str] | None = None,
        tags: Iterable[str] = (),
        checks: Iterable[Mapping[str, Any]] = (),
        **fields: Any,
    ) -> InstanceSpec:
        """Build a spec, giving it :func:`default_instance_id` when ``id`` is None."""
        return cls(
            service=service,
            id=id if id is not None else default_instance_id(hostname, port),
            port=port,
            tags=tuple(tags),
            meta=tuple(sorted((meta or {}).items())),
            checks=tuple(dict(c) for c in checks),
            **fields,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.id)

    @property
    def lease(self) -> float:
        """The lease in seconds the server will apply (0: none)."""
        if self.ttl is None:
            return DEFAULT_SERVER_TTL
        return parse_duration(self.ttl, field="ttl")

    @property
    def heartbeat_interval(self) -> float:
        lease = self.lease
        return lease / HEARTBEATS_PER_TTL if lease > 0 else NO_LEASE_CHECK_INTERVAL

    def body(self) -> dict[str, Any]:
        """The register request body: only what was given."""
        out: dict[str, Any] = {"port": self.port}
        optional = {
            "address": self.address,
            "proto": self.proto,
            "weight": self.weight,
            "priority": self.priority,
            "ttl": self.ttl,
            "dns_ttl": self.dns_ttl,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.tags:
            out["tags"] = list(self.tags)
        if self.meta:
            out["meta"] = dict(self.meta)
        if self.checks:
            out["checks"] = [dict(c) for c in self.checks]
        return out


def check_flags(
    http: Iterable[str] = (),
    tcp: Iterable[str] = (),
    *,
    interval: str | None = None,
    timeout: str | None = None,
) -> list[dict[str, Any]]:
    """``--check-http URL`` / ``--check-tcp HOST:PORT`` into check bodies."""
    checks: list[dict[str, Any]] = []
    for kind, targets in (("http", http), ("tcp", tcp)):
        for target in targets:
            check: dict[str, Any] = {kind: target}
            if interval is not None:
                check["interval"] = interval
            if timeout is not None:
                check["timeout"] = timeout
            checks.append(check)
    return checks
