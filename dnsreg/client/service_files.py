"""The registrar's service files: TOML in, :class:`InstanceSpec` out. Pure.

One file describes one or more instances::

    # services.d/db.toml
    [[instance]]
    service = "db"
    address = "10.0.0.7"
    port = 5432
    tags = ["primary"]
    meta = { version = "16" }
    ttl = "15s"

    [[instance.check]]
    tcp = "10.0.0.7:5432"
    interval = "5s"

A file holding a single instance may also put its keys at the top level (with
``[[check]]`` tables). Unknown keys are refused, naming the file and the key,
as the HTTP API refuses unknown fields.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dnsreg.client.registration import InstanceSpec, default_instance_id
from dnsreg.core.errors import DnsregError, InvalidInput

INSTANCE_KEYS = frozenset(
    {"service", "id", "address", "port", "proto", "tags", "meta", "weight", "priority", "ttl",
     "dns_ttl", "check"}
)  # fmt: skip
CHECK_KEYS = frozenset({"http", "tcp", "interval", "timeout", "rise", "fall", "deregister_after"})


def parse_service_file(name: str, text: str, *, hostname: str) -> list[InstanceSpec]:
    """Every instance in the file ``name``; :class:`InvalidInput` naming the file if bad."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{name}: not valid TOML: {exc}") from exc
    if "service" in doc:
        tables: list[Any] = [doc]
        where = [name]
    else:
        unknown = sorted(set(doc) - {"instance"})
        if unknown:
            raise InvalidInput(
                f"{name}: unknown key(s) {', '.join(unknown)} (describe instances in "
                "[[instance]] tables, or one instance with a top-level `service`)"
            )
        raw = doc.get("instance", [])
        if not isinstance(raw, list):
            raise InvalidInput(f"{name}: `instance` must be an array of tables: [[instance]]")
        tables = raw
        where = [f"{name}: instance #{n + 1}" for n in range(len(raw))]
    specs = []
    seen: set[tuple[str, str]] = set()
    for table, place in zip(tables, where, strict=True):
        spec = _instance(place, table, hostname)
        if spec.key in seen:
            raise InvalidInput(f"{place}: {spec.service}/{spec.id} appears twice in the file")
        seen.add(spec.key)
        specs.append(spec)
    return specs


def _instance(place: str, table: Any, hostname: str) -> InstanceSpec:
    if not isinstance(table, dict):
        raise InvalidInput(f"{place}: expected a table")
    unknown = sorted(set(table) - INSTANCE_KEYS)
    if unknown:
        raise InvalidInput(f"{place}: unknown key(s) {', '.join(unknown)}")
    for key in ("service", "port"):
        if key not in table:
            raise InvalidInput(f"{place}: `{key}` is missing")
    service = _typed(place, table, "service", str)
    port = _typed(place, table, "port", int)
    address = table.get("address")
    if address is not None:
        address = _typed(place, table, "address", str)
    instance_id = table.get("id")
    if instance_id is None:
        # Not this host's service: name it after where it lives, which is stable.
        instance_id = (
            default_instance_id(re.sub(r"[.:]", "-", address), port)
            if address
            else default_instance_id(hostname, port)
        )
    tags = table.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInput(f"{place}: `tags` must be a list of strings")
    meta = table.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidInput(f'{place}: `meta` must be a table of strings, e.g. {{ version = "2" }}')
    raw_checks = table.get("check", [])
    if not isinstance(raw_checks, list):
        raise InvalidInput(f"{place}: `check` must be an array of tables: [[instance.check]]")
    checks = [_check(f"{place}: check #{n + 1}", c) for n, c in enumerate(raw_checks)]
    extra: dict[str, Any] = {}
    for key, kinds in (
        ("proto", str),
        ("weight", int),
        ("priority", int),
        ("ttl", (str, int, float)),
        ("dns_ttl", (str, int, float)),
    ):
        if key in table:
            extra[key] = _typed(place, table, key, kinds)
    try:
        return InstanceSpec.build(
            service,
            _typed(place, {"id": instance_id}, "id", str),
            port=port,
            hostname=hostname,
            address=address,
            tags=tags,
            meta=meta,
            checks=checks,
            **extra,
        )
    except DnsregError as exc:
        raise InvalidInput(f"{place}: {exc.message}", field=exc.field) from exc


def _check(place: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InvalidInput(f"{place}: expected a table")
    unknown = sorted(set(table) - CHECK_KEYS)
    if unknown:
        raise InvalidInput(f"{place}: unknown key(s) {', '.join(unknown)}")
    if ("http" in table) == ("tcp" in table):
        raise InvalidInput(f"{place}: give exactly one of `http` or `tcp`")
    return dict(table)


def _typed(place: str, table: Mapping[str, Any], key: str, kinds: Any) -> Any:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidInput(f"{place}: `{key}` has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True, slots=True)
class Plan:
    """What the registrar should hold, and which instances it had to leave out."""

    desired: dict[tuple[str, str], InstanceSpec]
    origin: dict[tuple[str, str], str]  # instance -> the file it came from
    duplicates: dict[str, str]  # file -> why some of its instances were left out


def plan(files: Mapping[str, Iterable[InstanceSpec]]) -> Plan:
    """Merge the files' instances; an instance two files claim stays with the first (by name)."""
    desired: dict[tuple[str, str], InstanceSpec] = {}
    origin: dict[tuple[str, str], str] = {}
    duplicates: dict[str, str] = {}
    for name in sorted(files):
        for spec in files[name]:
            owner = origin.get(spec.key)
            if owner is not None:
                duplicates[name] = (
                    f"{name}: {spec.service}/{spec.id} is already described in {owner}; ignored"
                )
                continue
            desired[spec.key] = spec
            origin[spec.key] = name
    return Plan(desired, origin, duplicates)


def diff(
    current: Mapping[tuple[str, str], InstanceSpec], desired: Mapping[tuple[str, str], InstanceSpec]
) -> tuple[list[InstanceSpec], list[InstanceSpec], list[tuple[str, str]]]:
    """(to add, to change, keys to remove) to get from ``current`` to ``desired``."""
    add = [spec for key, spec in desired.items() if key not in current]
    change = [spec for key, spec in desired.items() if key in current and current[key] != spec]
    remove = [key for key in current if key not in desired]
    return add, change, remove
