"""The etcd store's pure half: key layout, value encoding, and events → registry Changes.

Pure: no sockets, no asyncio, no clock (``now`` is passed in). The I/O half
(:mod:`dnsreg.store.etcd`) feeds it what etcd's watch and range calls return.

Layout under the URL's prefix ``P`` (``etcd://host:port/dnsreg`` → ``/dnsreg/``)::

    P/instances/<service>/<id>   one instance (JSON below), on its own etcd lease
    P/nodes/<node-id>            one live dnsreg node, on that node's lease
    P/deregistered               written in the same txn as a deregistration's delete

A deletion of an instance key is an *expiry* unless the same revision also
wrote ``P/deregistered`` naming that instance: etcd deletes leased keys on its
own when the lease runs out, and a txn is one revision, so the cause of every
delete is known exactly, on every node, from the watch alone. The cause key is
a single key overwritten each time, so it never accumulates.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dnsreg.core.model import CheckStatus, Instance, Registration
from dnsreg.core.registry import Change, ChangeKind

INSTANCES = "instances"
NODES = "nodes"
CAUSE = "deregistered"
FORMAT = 1  # "v" in every stored value, so a later layout can tell old rows apart

Op = Literal["register", "maintenance", "health"]
_KIND_FOR_OP = {"maintenance": ChangeKind.MAINTENANCE, "health": ChangeKind.HEALTH}


class CodecError(ValueError):
    """A stored value dnsreg did not write (or wrote in a format it no longer reads)."""


# ------------------------------------------------------------------- base64, ranges
def b64(data: bytes) -> str:
    """The JSON gateway carries every key and value as base64."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with ``prefix``".

    The prefix with its last byte incremented; trailing 0xff bytes carry over.
    A prefix of only 0xff bytes (or none) ranges to the end of the keyspace: b"\\0".
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


# ------------------------------------------------------------------------ values seen
@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd reports it (range result or watch event), already decoded."""

    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyValue:
        # The gateway omits fields that hold their default (0, empty) and
        # sends 64-bit integers as strings.
        return cls(
            key=unb64(data.get("key", "")),
            value=unb64(data.get("value", "")),
            create_revision=int(data.get("create_revision", 0)),
            mod_revision=int(data.get("mod_revision", 0)),
            version=int(data.get("version", 0)),
            lease=int(data.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One watch event: a put (no ``type`` on the wire) or a delete."""

    type: Literal["put", "delete"]
    kv: KeyValue

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        kind: Literal["put", "delete"] = "delete" if data.get("type") == "DELETE" else "put"
        return cls(kind, KeyValue.from_json(data.get("kv", {})))


def group_by_revision(events: Iterable[Event]) -> list[tuple[int, list[Event]]]:
    """Split a watch response into revisions, in order (one response may span several)."""
    groups: list[tuple[int, list[Event]]] = []
    for event in events:
        revision = event.kv.mod_revision
        if groups and groups[-1][0] == revision:
            groups[-1][1].append(event)
        else:
            groups.append((revision, [event]))
    return groups


# ---------------------------------------------------------------------------- keys
@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: Literal["instance", "node", "cause"]
    service: str = ""
    id: str = ""  # instance id, or the node id for a node key


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things live under one prefix."""

    prefix: str  # always ends with "/"

    @classmethod
    def from_path(cls, path: str) -> Layout:
        """``/dnsreg`` or ``dnsreg/`` → ``/dnsreg/``; empty → ``/dnsreg/``."""
        clean = "/".join(part for part in path.split("/") if part)
        return cls(f"/{clean or 'dnsreg'}/")

    @property
    def everything(self) -> tuple[bytes, bytes]:
        start = self.prefix.encode()
        return start, prefix_end(start)

    def instance_key(self, service: str, instance_id: str) -> bytes:
        return f"{self.prefix}{INSTANCES}/{service}/{instance_id}".encode()

    def node_key(self, node: str) -> bytes:
        return f"{self.prefix}{NODES}/{node}".encode()

    @property
    def cause_key(self) -> bytes:
        return f"{self.prefix}{CAUSE}".encode()

    def parse(self, key: bytes) -> ParsedKey | None:
        """What a key under the prefix is; None for keys dnsreg does not own."""
        try:
            text = key.decode()
        except UnicodeDecodeError:
            return None
        if not text.startswith(self.prefix):
            return None
        parts = text[len(self.prefix) :].split("/")
        if parts[0] == INSTANCES and len(parts) == 3 and parts[1] and parts[2]:
            return ParsedKey("instance", parts[1], parts[2])
        if parts[0] == NODES and len(parts) == 2 and parts[1]:
            return ParsedKey("node", id=parts[1])
        if parts == [CAUSE]:
            return ParsedKey("cause")
        return None


# -------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class Stored:
    """What one instance key holds. The revision is etcd's ``mod_revision``, not stored."""

    reg: Registration
    registered_at: float
    op: Op  # which write produced this value: tells REPLACED, MAINTENANCE and HEALTH apart
    token: str  # unique per write: a retried write recognises its own earlier success
    lease_ttl: int = 0  # seconds etcd granted (it rounds up and enforces a minimum)
    maintenance: str | None = None
    checks: tuple[CheckStatus, ...] = ()

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": FORMAT,
                "reg": self.reg.to_json(),
                "registered_at": self.registered_at,
                "op": self.op,
                "token": self.token,
                "lease_ttl": self.lease_ttl,
                "maintenance": self.maintenance,
                "checks": [c.to_json() for c in self.checks],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Stored:
        try:
            data = json.loads(raw)
            if data.get("v") != FORMAT:
                raise CodecError(f"unknown value format {data.get('v')!r}")
            op = data["op"]
            if op not in ("register", "maintenance", "health"):
                raise CodecError(f"unknown op {op!r}")
            return cls(
                reg=Registration.from_json(data["reg"]),
                registered_at=float(data["registered_at"]),
                op=op,
                token=str(data["token"]),
                lease_ttl=int(data.get("lease_ttl", 0)),
                maintenance=data.get("maintenance"),
                checks=tuple(CheckStatus.from_json(c) for c in data.get("checks", [])),
            )
        except CodecError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CodecError(f"not a dnsreg instance value: {exc}") from exc

    @classmethod
    def of(cls, instance: Instance, *, op: Op, token: str, lease_ttl: int) -> Stored:
        """The value for ``instance`` as the mirror holds it, rewritten by ``op``."""
        return cls(
            reg=instance.reg,
            registered_at=instance.registered_at,
            op=op,
            token=token,
            lease_ttl=lease_ttl,
            maintenance=instance.maintenance,
            checks=instance.checks,
        )

    def to_instance(self, revision: int, now: float) -> Instance:
        """The mirror's instance. Its deadline is this node's estimate: etcd holds the lease."""
        ttl = self.lease_ttl or self.reg.ttl
        return Instance(
            reg=self.reg,
            deadline=now + ttl if self.reg.ttl > 0 else None,
            registered_at=self.registered_at,
            revision=revision,
            checks=self.checks,
            maintenance=self.maintenance,
        )


def encode_cause(
    service: str, instance_id: str, token: str, also: Sequence[tuple[str, str]] = ()
) -> bytes:
    """``also``: more instances deregistered by the same txn (one DNS UPDATE)."""
    data: dict[str, Any] = {"service": service, "id": instance_id, "token": token}
    if also:
        data["also"] = [list(k) for k in also]
    return json.dumps(data).encode()


def deregistered_by(raw: bytes) -> set[tuple[str, str]]:
    """Every instance a cause value names (its own and ``also``)."""
    cause = decode_cause(raw)
    if cause is None:
        return set()
    out = {(cause[0], cause[1])}
    with contextlib.suppress(ValueError, TypeError):
        out |= {(str(s), str(i)) for s, i in json.loads(raw).get("also", [])}
    return out


def decode_cause(raw: bytes) -> tuple[str, str, str] | None:
    try:
        data = json.loads(raw)
        return str(data["service"]), str(data["id"]), str(data["token"])
    except (ValueError, KeyError, TypeError):
        return None


def encode_node(info: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(info), separators=(",", ":")).encode()


def checks_for(reg: Registration, before: Instance | None) -> tuple[CheckStatus, ...]:
    """Check results a (re-)registration starts with: kept when the checks did not change."""
    if before is not None and before.reg.checks == reg.checks:
        return before.checks
    return tuple(CheckStatus() for _ in reg.checks)


# ------------------------------------------------------------- events → Changes
@dataclass(slots=True)
class Delta:
    """What one etcd revision means for the mirror."""

    revision: int
    changes: list[Change] = field(default_factory=list)
    # (lease id, granted TTL) per instance put; None: the instance is gone.
    leases: dict[tuple[str, str], tuple[int, int] | None] = field(default_factory=dict)
    nodes_up: dict[str, bytes] = field(default_factory=dict)
    nodes_down: set[str] = field(default_factory=set)
    undecodable: list[bytes] = field(default_factory=list)  # keys whose value we could not read


def changes_for_revision(
    layout: Layout,
    revision: int,
    events: Sequence[Event],
    lookup: Callable[[str, str], Instance | None],
    now: float,
) -> Delta:
    """Turn the events of one etcd revision into registry Changes (in key order).

    ``lookup`` reads the mirror as it was before this revision. etcd refuses a
    txn that touches one key twice, so each instance appears at most once here.
    """
    delta = Delta(revision)
    deregistered: set[tuple[str, str]] = set()
    for event in events:
        parsed = layout.parse(event.kv.key)
        if parsed is not None and parsed.kind == "cause" and event.type == "put":
            deregistered = deregistered_by(event.kv.value)
    for event in sorted(events, key=lambda e: e.kv.key):
        parsed = layout.parse(event.kv.key)
        if parsed is None or parsed.kind == "cause":
            continue
        if parsed.kind == "node":
            if event.type == "put":
                delta.nodes_up[parsed.id] = event.kv.value
            else:
                delta.nodes_down.add(parsed.id)
            continue
        service, instance_id = parsed.service, parsed.id
        before = lookup(service, instance_id)
        if event.type == "delete":
            delta.leases[(service, instance_id)] = None
            if before is None:
                continue  # never seen (e.g. removed before our list): nothing to withdraw
            kind = (
                ChangeKind.DEREGISTERED
                if (service, instance_id) in deregistered
                else ChangeKind.EXPIRED
            )
            delta.changes.append(Change(kind, revision, service, instance_id, before, None))
            continue
        try:
            stored = Stored.decode(event.kv.value)
        except CodecError:
            delta.undecodable.append(event.kv.key)
            continue
        if stored.reg.service != service or stored.reg.id != instance_id:
            delta.undecodable.append(event.kv.key)
            continue
        after = stored.to_instance(revision, now)
        if before is None:
            kind = ChangeKind.REGISTERED
        else:
            kind = _KIND_FOR_OP.get(stored.op, ChangeKind.REPLACED)
        delta.leases[(service, instance_id)] = (event.kv.lease, stored.lease_ttl)
        delta.changes.append(Change(kind, revision, service, instance_id, before, after))
    return delta


@dataclass(slots=True)
class Snapshot:
    """Everything under the prefix at one revision (a full range)."""

    revision: int
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    leases: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    nodes: dict[str, bytes] = field(default_factory=dict)
    last_deregistered: tuple[str, str] | None = None
    undecodable: list[bytes] = field(default_factory=list)


def snapshot(layout: Layout, revision: int, kvs: Iterable[KeyValue], now: float) -> Snapshot:
    snap = Snapshot(revision)
    for kv in kvs:
        parsed = layout.parse(kv.key)
        if parsed is None:
            continue
        if parsed.kind == "node":
            snap.nodes[parsed.id] = kv.value
        elif parsed.kind == "cause":
            cause = decode_cause(kv.value)
            snap.last_deregistered = (cause[0], cause[1]) if cause is not None else None
        else:
            try:
                stored = Stored.decode(kv.value)
            except CodecError:
                snap.undecodable.append(kv.key)
                continue
            key = (parsed.service, parsed.id)
            if (stored.reg.service, stored.reg.id) != key:
                snap.undecodable.append(kv.key)
                continue
            snap.instances[key] = stored.to_instance(kv.mod_revision, now)
            snap.leases[key] = (kv.lease, stored.lease_ttl)
    return snap


def resync_changes(current: Iterable[Instance], snap: Snapshot) -> list[Change]:
    """Changes that turn the mirror (``current``) into ``snap``, in key order.

    Used after a reconnect that could not resume the watch (its revision was
    compacted). What happened in between is lost, so every change carries the
    snapshot's revision. A vanished instance counts as deregistered only if the
    cause key still names it; otherwise it expired.
    """
    old = {(i.reg.service, i.reg.id): i for i in current}
    rev = snap.revision
    changes: list[Change] = []
    for key in sorted(old.keys() | snap.instances.keys()):
        before, after = old.get(key), snap.instances.get(key)
        service, instance_id = key
        if after is None:
            assert before is not None
            kind = ChangeKind.DEREGISTERED if snap.last_deregistered == key else ChangeKind.EXPIRED
            changes.append(Change(kind, rev, service, instance_id, before, None))
        elif before is None:
            changes.append(Change(ChangeKind.REGISTERED, rev, service, instance_id, None, after))
        elif before.revision != after.revision:
            if before.reg != after.reg:
                kind = ChangeKind.REPLACED
            elif before.maintenance != after.maintenance:
                kind = ChangeKind.MAINTENANCE
            elif before.health is not after.health:
                kind = ChangeKind.HEALTH
            else:
                kind = ChangeKind.REPLACED  # re-registered with the same data
            changes.append(Change(kind, rev, service, instance_id, before, after))
    return changes


# --------------------------------------------------------------- check placement
def rendezvous_owner(nodes: Iterable[str], service: str, instance_id: str) -> str | None:
    """Highest-random-weight hashing: the node that runs the checks of one instance.

    Every node computes the same answer from the same node set, and when a
    node leaves only the instances it owned move (to whichever node scores
    next), so membership churn does not reshuffle everything.
    """
    best: tuple[bytes, str] | None = None
    item = f"{service}/{instance_id}".encode()
    for node in nodes:
        score = hashlib.blake2b(node.encode() + b"\0" + item, digest_size=8).digest()
        if best is None or (score, node) > best:
            best = (score, node)
    return best[1] if best is not None else None
