"""Request bodies, validated by msgspec: unknown fields are refused, errors name the field."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

import msgspec

from dnsreg.core.admission import AdmissionPolicy, check_address, check_interval
from dnsreg.core.durations import parse_duration
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import (
    DEFAULT_DNS_TTL,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    Check,
    Registration,
)
from dnsreg.core.names import check_label
from dnsreg.core.targets import HttpTarget

Duration = float | str
MAX_TAGS = 32
MAX_META = 64
MAX_CHECKS = 8
DEFAULT_CHECK_TIMEOUT = 2.0


class CheckBody(msgspec.Struct, forbid_unknown_fields=True):
    http: str | None = None
    tcp: str | None = None
    interval: Duration = 10.0
    timeout: Duration | None = None  # default: 2 s, or the interval when shorter
    rise: int = 1
    fall: int = 2
    deregister_after: Duration | None = None


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    port: int
    address: str | None = None
    proto: Literal["tcp", "udp"] = "tcp"
    tags: list[str] = msgspec.field(default_factory=list)
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    weight: int = 1
    priority: int = 0
    ttl: Duration = 30.0
    dns_ttl: Duration = float(DEFAULT_DNS_TTL)
    checks: list[CheckBody] = msgspec.field(default_factory=list)


class MaintenanceBody(msgspec.Struct, forbid_unknown_fields=True):
    enable: bool
    reason: str = ""


def decode_body(raw: bytes, kind: type[msgspec.Struct]) -> Any:
    """Decode JSON into ``kind``; turn msgspec's complaint into a 400 naming the field."""
    if not raw.strip():
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise InvalidInput(text, field=_field_of(text)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc


# msgspec says where ("... - at `$.checks[0]`") and, for unknown or missing
# fields, which one ("Object contains unknown field `bogus`"): join the two.
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def _field_of(message: str) -> str | None:
    """The dotted path of the offending field, e.g. ``checks[0].bogus``."""
    at = _AT.search(message)
    path = at.group(1).replace("[...]", "") if at else ""
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def _range(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{field}: must be between {low} and {high}, got {value}", field=field)
    return value


def _check(body: CheckBody, n: int, policy: AdmissionPolicy) -> Check:
    where = f"checks[{n}]"
    if (body.http is None) == (body.tcp is None):
        raise InvalidInput(f"{where}: give exactly one of 'http' or 'tcp'", field=where)
    if body.http is not None:
        if not body.http.startswith(("http://", "https://")):
            raise InvalidInput(f"{where}.http: must be an http:// or https:// URL", field=where)
        try:
            HttpTarget.parse(body.http)
        except ValueError as exc:
            raise InvalidInput(f"{where}.http: {exc}", field=where) from exc
        kind: Literal["http", "tcp"] = "http"
        target = body.http
    else:
        assert body.tcp is not None
        host, sep, port = body.tcp.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"{where}.tcp: must be HOST:PORT", field=where)
        kind, target = "tcp", body.tcp
    interval = parse_duration(body.interval, field=f"{where}.interval")
    timeout = (
        parse_duration(body.timeout, field=f"{where}.timeout")
        if body.timeout is not None
        else min(DEFAULT_CHECK_TIMEOUT, interval)
    )
    check_interval(interval, policy, field=f"{where}.interval")
    if not 0 < timeout <= interval:
        raise InvalidInput(
            f"{where}.timeout: must be above 0 and at most the interval", field=f"{where}.timeout"
        )
    deregister_after = (
        parse_duration(body.deregister_after, field=f"{where}.deregister_after")
        if body.deregister_after is not None
        else None
    )
    return Check(
        kind=kind,
        target=target,
        interval=interval,
        timeout=timeout,
        rise=_range(body.rise, 1, 100, f"{where}.rise"),
        fall=_range(body.fall, 1, 100, f"{where}.fall"),
        deregister_after=deregister_after,
    )


def to_registration(
    service: str,
    instance_id: str,
    body: RegisterBody,
    caller: str | None,
    policy: AdmissionPolicy = AdmissionPolicy(),  # noqa: B008 - frozen, so shared safely
) -> Registration:
    """Validate a register body into a Registration (names folded to lower case).

    ``policy``: the operator's admission rules (SPEC §7). Check hosts that are
    names are resolved by the caller afterwards (:mod:`dnsreg.http.admission`).
    """
    service = check_label(service, field="service")
    instance_id = check_label(instance_id, field="id")
    address_text = body.address or caller
    if not address_text:
        raise InvalidInput("address: missing and the caller's address is unknown", field="address")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError as exc:
        raise InvalidInput(
            f"address: {address_text!r} is not an IPv4 or IPv6 address", field="address"
        ) from exc
    check_address(address, policy)
    if len(body.tags) > MAX_TAGS:
        raise InvalidInput(f"tags: at most {MAX_TAGS}", field="tags")
    tags = tuple(dict.fromkeys(check_label(t, field=f"tags[{n}]") for n, t in enumerate(body.tags)))
    if len(body.meta) > MAX_META:
        raise InvalidInput(f"meta: at most {MAX_META} keys", field="meta")
    for key, value in body.meta.items():
        # RFC 6763 §6.4/§6.5: printable key without '=', each "key=value" string ≤ 255 octets.
        if not key or "=" in key or not key.isprintable() or not key.isascii():
            raise InvalidInput(
                f"meta: key {key!r} must be printable ASCII without '='", field="meta"
            )
        if len(f"{key}={value}".encode()) > 255:
            raise InvalidInput(f"meta.{key}: key=value is longer than 255 bytes", field="meta")
    ttl = parse_duration(body.ttl, field="ttl")
    if ttl != 0 and not MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL:
        raise InvalidInput("ttl: must be 0 (no lease) or between 1s and 24h", field="ttl")
    dns_ttl = parse_duration(body.dns_ttl, field="dns_ttl")
    if dns_ttl != int(dns_ttl) or not 0 <= dns_ttl <= 86400:
        raise InvalidInput("dns_ttl: whole seconds between 0 and 86400", field="dns_ttl")
    if len(body.checks) > MAX_CHECKS:
        raise InvalidInput(f"checks: at most {MAX_CHECKS}", field="checks")
    return Registration(
        service=service,
        id=instance_id,
        address=address,
        port=_range(body.port, 1, 65535, "port"),
        proto=body.proto,
        tags=tags,
        meta=tuple(sorted(body.meta.items())),
        weight=_range(body.weight, 1, 65535, "weight"),
        priority=_range(body.priority, 0, 65535, "priority"),
        ttl=ttl,
        dns_ttl=int(dns_ttl),
        checks=tuple(_check(c, n, policy) for n, c in enumerate(body.checks)),
    )
