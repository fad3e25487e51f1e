"""Consul request bodies: decoded the way Consul decodes them, turned into dnsreg values.

Consul matches JSON field names case-insensitively (Go's ``encoding/json``)
and also takes snake_case spellings (its ``lib/decode`` translations): py-consul
sends ``name``, ``id``, ``checks``, ``DeregisterCriticalServiceAfter``; Consul's
docs write ``Name``, ``ID``, ``Checks``. So keys of Consul's own objects are folded
(lower case, no ``_``) before msgspec validates the types; keys of user maps
(``Meta``) are left as they are. A field dnsreg does not know is refused with a
400 naming it, rather than silently dropped.

Pure: no I/O. The result is a :class:`~dnsreg.core.model.Registration` with no
lease (``ttl`` 0: a Consul service stays until deregistered or reaped by
``DeregisterCriticalServiceAfter``), so the registry needs nothing new.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Literal

import msgspec

from dnsreg.core.admission import AdmissionPolicy
from dnsreg.core.durations import parse_duration
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Check, Health, Registration
from dnsreg.core.names import check_label
from dnsreg.http.schema import MAX_CHECKS, CheckBody, RegisterBody, _check
from dnsreg.http.schema import to_registration as native_registration

Duration = str | float


def _fold(name: str) -> str:
    return name.replace("_", "").lower()


class ConsulCheck(msgspec.Struct, forbid_unknown_fields=True, rename=_fold):
    """``AgentServiceCheck`` (agent/service.mdx, "Checks"), the part dnsreg runs."""

    check_id: str | None = None
    name: str | None = None
    notes: str | None = None  # accepted; dnsreg keeps no notes
    http: str | None = None
    tcp: str | None = None
    ttl: Duration | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    deregister_critical_service_after: Duration | None = None
    success_before_passing: int = 0
    failures_before_critical: int = 0


class ConsulWeights(msgspec.Struct, forbid_unknown_fields=True, rename=_fold):
    passing: int = 1
    warning: int = 1


class ConsulService(msgspec.Struct, forbid_unknown_fields=True, rename=_fold):
    """``PUT /v1/agent/service/register`` (agent/service.mdx, "Register Service")."""

    name: str
    id: str | None = None
    tags: list[str] | None = None
    address: str | None = None
    port: int | None = None
    meta: dict[str, str] | None = None
    weights: ConsulWeights | None = None
    check: ConsulCheck | None = None
    checks: list[ConsulCheck] | None = None
    enable_tag_override: bool = False  # accepted; there is no catalog to override tags from


class ConsulCheckUpdate(msgspec.Struct, forbid_unknown_fields=True, rename=_fold):
    """``PUT /v1/agent/check/update/:check_id`` (agent/check.mdx)."""

    status: Literal["passing", "warning", "critical"]
    output: str = ""


#: Consul's spelling of each field, for messages ("Port", not "port").
_CONSUL_FIELDS = [
    "CheckID", "Name", "Notes", "HTTP", "TCP", "TTL", "Interval", "Timeout",
    "DeregisterCriticalServiceAfter", "SuccessBeforePassing", "FailuresBeforeCritical",
    "Passing", "Warning", "ID", "Tags", "Address", "Port", "Meta", "Weights", "Check",
    "Checks", "EnableTagOverride", "Status", "Output",
]  # fmt: skip
CANONICAL = {_fold(n): n for n in _CONSUL_FIELDS}
#: Which fields hold Consul objects whose own keys are folded too.
_NESTED: dict[str, type[msgspec.Struct]] = {
    "check": ConsulCheck,
    "checks": ConsulCheck,
    "weights": ConsulWeights,
}


def _fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(_fold(f) for f in kind.__struct_fields__)


def _normalise(value: Any, kind: type[msgspec.Struct], where: str, unknown: list[str]) -> Any:
    """Fold the keys of a Consul object; collect the keys ``kind`` does not have."""
    if not isinstance(value, dict):
        return value  # msgspec names the type error
    known = _fields(kind)
    out: dict[str, Any] = {}
    for key, item in value.items():
        folded = _fold(key)
        if folded not in known:
            unknown.append(f"{where}{key}")
            continue
        if folded in out:
            raise InvalidInput(f"{where}{key}: given twice (field names ignore case)")
        nested = _NESTED.get(folded)
        if nested is not None and isinstance(item, list):
            item = [
                _normalise(x, nested, f"{where}{CANONICAL[folded]}[{n}].", unknown)
                for n, x in enumerate(item)
            ]
        elif nested is not None:
            item = _normalise(item, nested, f"{where}{CANONICAL[folded]}.", unknown)
        out[folded] = item
    return out


def decode(raw: bytes, kind: type[msgspec.Struct]) -> Any:
    """Decode a Consul request body into ``kind``; every complaint a 400 naming the field."""
    if not raw.strip():
        raise InvalidInput("Request decode failed: the body is empty")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"Request decode failed: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("Request decode failed: expected a JSON object")
    unknown: list[str] = []
    folded = _normalise(data, kind, "", unknown)
    if unknown:
        raise InvalidInput(f"unknown or unsupported field(s): {', '.join(unknown)}")
    try:
        return msgspec.convert(folded, kind)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"Request decode failed: {_consul_names(str(exc))}") from exc


def _consul_names(message: str) -> str:
    """msgspec's ``$.checks[0].deregistercriticalserviceafter`` in Consul's spelling."""

    def path(match: re.Match[str]) -> str:
        return re.sub(r"[a-z]+", lambda m: CANONICAL.get(m.group(0), m.group(0)), match.group(0))

    return re.sub(r"`[^`]*`", path, message)  # only inside msgspec's `quoted` names


# ------------------------------------------------------------------ durations
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(value: Duration, field: str) -> float:
    """A Go duration as Consul takes it (``"10s"``, ``"1m30s"``, ``"500ms"``), in seconds."""
    if isinstance(value, str):
        text = value.strip()
        parts = _GO_DURATION.findall(text)
        if parts and "".join(a + b for a, b in parts) == text:
            return sum(float(a) * _GO_UNITS[b] for a, b in parts)
    return parse_duration(value, field=field)


# -------------------------------------------------------------- registrations
def default_check_id(service_id: str, index: int, count: int) -> str:
    """Consul's CheckID for a service's check given without one: ``service:<id>[:<n>]``."""
    return f"service:{service_id}" if count == 1 else f"service:{service_id}:{index + 1}"


def _to_check(
    body: ConsulCheck, where: str, check_id: str, service_name: str, policy: AdmissionPolicy
) -> Check:
    kinds = [k for k in ("HTTP", "TCP", "TTL") if getattr(body, k.lower()) is not None]
    if len(kinds) != 1:
        raise InvalidInput(f"{where}: give exactly one of HTTP, TCP or TTL (dnsreg runs those)")
    reap = body.deregister_critical_service_after
    deregister_after = (
        duration(reap, f"{where}.DeregisterCriticalServiceAfter") if reap is not None else None
    )
    for label, count in (
        ("SuccessBeforePassing", body.success_before_passing),
        ("FailuresBeforeCritical", body.failures_before_critical),
    ):
        if not 0 <= count <= 100:
            raise InvalidInput(f"{where}.{label}: must be between 0 and 100")
    # Consul counts the results *before* the change; 0 (its default) means at once.
    rise = max(1, body.success_before_passing)
    fall = max(1, body.failures_before_critical)
    name = body.name or f"Service '{service_name}' check"
    if body.ttl is not None:
        if body.interval is not None:
            raise InvalidInput(f"{where}: a TTL check has no Interval")
        ttl = duration(body.ttl, f"{where}.TTL")
        if ttl < 1.0:
            raise InvalidInput(f"{where}.TTL: at least 1s")
        ttl_text = body.ttl if isinstance(body.ttl, str) else f"{body.ttl:g}s"
        return Check(
            kind="ttl", target=ttl_text, interval=ttl, timeout=ttl, rise=rise, fall=fall,
            deregister_after=deregister_after, id=check_id, name=name,
        )  # fmt: skip
    if body.interval is None:
        raise InvalidInput(f"{where}.Interval: required for HTTP and TCP checks")
    interval = duration(body.interval, f"{where}.Interval")
    # Consul's default Timeout is 10s and may exceed the Interval; dnsreg runs a
    # check at most once per interval, so the timeout is capped at the interval.
    timeout = duration(body.timeout, f"{where}.Timeout") if body.timeout is not None else 10.0
    native = CheckBody(
        http=body.http,
        tcp=body.tcp,
        interval=interval,
        timeout=min(timeout, interval) if timeout > 0 else timeout,
        rise=rise,
        fall=fall,
        deregister_after=deregister_after,
    )
    # The native validation (URL, HOST:PORT, interval and timeout bounds), one copy of it.
    try:
        check = _check(native, 0, policy)
    except InvalidInput as exc:
        raise InvalidInput(exc.message.replace("checks[0]", where), field=where) from exc
    return replace(check, id=check_id, name=name)


def to_registration(
    body: ConsulService,
    caller: str | None,
    policy: AdmissionPolicy = AdmissionPolicy(),  # noqa: B008 - frozen, so shared safely
) -> Registration:
    """A Consul service definition as a dnsreg registration without a lease.

    ``policy``: the same admission rules as the native route (SPEC §7)."""
    service = check_label(body.name, field="Name")
    instance_id = check_label(body.id if body.id is not None else body.name, field="ID")
    if body.port is None:
        raise InvalidInput("Port: required (dnsreg answers SRV records, which need one)")
    checks = [*([body.check] if body.check is not None else []), *(body.checks or [])]
    if len(checks) > MAX_CHECKS:
        raise InvalidInput(f"Checks: at most {MAX_CHECKS}")
    weights = body.weights or ConsulWeights()
    native = RegisterBody(
        port=body.port,
        address=body.address or None,  # Consul: "" means the agent's address
        tags=body.tags or [],
        meta=body.meta or {},
        weight=weights.passing,
        ttl=0.0,
    )
    reg = native_registration(service, instance_id, native, caller, policy)
    converted = []
    seen: set[str] = set()
    for n, c in enumerate(checks):
        where = "Check" if body.check is not None and n == 0 else f"Checks[{n}]"
        check_id = c.check_id or default_check_id(instance_id, n, len(checks))
        if check_id in seen:
            raise InvalidInput(f"{where}.CheckID: {check_id!r} is given twice")
        seen.add(check_id)
        converted.append(_to_check(c, where, check_id, service, policy))
    return replace(reg, checks=tuple(converted))


STATUS_OF: dict[str, Health] = {
    "passing": Health.PASSING,
    "warning": Health.WARNING,
    "critical": Health.CRITICAL,
}
