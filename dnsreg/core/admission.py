"""What a registration may say beyond its syntax (SPEC §7). Pure: no sockets, no clock.

A service registry decides where traffic goes, and its health checker opens
connections where registrations tell it to. Three rules keep a registration
from being a weapon:

* the address must be one a client can use: never unspecified (``0.0.0.0``,
  ``::``; RFC 4291 §2.5.2, RFC 1122 §3.2.1.3), multicast (RFC 5771, RFC 4291
  §2.7) or the limited broadcast ``255.255.255.255`` (RFC 919 §7), and inside
  ``allowed_networks`` when the operator lists them;
* a check connects to the instance itself: its host is the instance's own
  address, or a name that resolves to nothing else (so the checker is no
  window into the network: no SSRF, no port scans of third hosts);
* a check runs at most once a second, so many registrations cannot turn the
  checker into a load generator.

Every registration path (HTTP native, Consul routes, DNS UPDATE) validates
through :func:`check_address` and :func:`check_interval`; the name lookups that
:func:`check_host_addresses` needs are done by the caller (I/O), off the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dnsreg.core.durations import format_duration
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Check, IPAddress
from dnsreg.core.targets import HttpTarget

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: SPEC §7: a check runs at most once a second.
MIN_CHECK_INTERVAL = 1.0

_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """The operator's settings that decide what registrations are admitted."""

    #: Empty: every usable address. Else the address must be in one of them.
    allowed_networks: tuple[IPNetwork, ...] = ()
    #: Config ``checks_any_host``: checks may target any host (trusted networks only).
    checks_any_host: bool = False
    #: Config ``check_min_interval``: the shortest check interval admitted.
    min_check_interval: float = MIN_CHECK_INTERVAL


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``"10.0.0.0/8"``, ``"fd00::/8"``) as networks; ValueError names the bad one.

    Strict: host bits set (``10.0.0.1/8``) is refused, as it is almost always a typo
    for a narrower network than the operator meant.
    """
    out: list[IPNetwork] = []
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a CIDR string")
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a network in CIDR notation: {exc}") from exc
    return tuple(out)


def unusable_reason(address: IPAddress) -> str | None:
    """Why no client could use ``address`` as a destination, or None."""
    if address.is_unspecified:
        return "the unspecified address means 'any address' and no client can connect to it"
    if address.is_multicast:
        return "a multicast address is a group, not an instance"
    if address == _LIMITED_BROADCAST:
        return "the limited-broadcast address reaches every host on the link, not an instance"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return unusable_reason(address.ipv4_mapped)
    return None


def check_address(
    address: IPAddress, policy: AdmissionPolicy, *, field: str = "address"
) -> IPAddress:
    """``address`` if a registration may use it; else InvalidInput naming ``field``."""
    reason = unusable_reason(address)
    if reason is not None:
        raise InvalidInput(f"{field}: {address} is not allowed: {reason}", field=field)
    networks = policy.allowed_networks
    if networks and not any(address in net for net in networks if net.version == address.version):
        allowed = [str(net) for net in networks]
        raise InvalidInput(
            f"{field}: {address} is outside the allowed networks ({', '.join(allowed)})",
            field=field,
            detail={"field": field, "allowed_networks": allowed},
        )
    return address


def check_interval(interval: float, policy: AdmissionPolicy, *, field: str) -> float:
    """``interval`` if at least the policy's minimum (1 s by default); else InvalidInput."""
    floor = policy.min_check_interval
    if interval < floor:
        raise InvalidInput(
            f"{field}: at least {format_duration(floor)} (checks run at most that often)",
            field=field,
        )
    return interval


# ----------------------------------------------------------------- check hosts
def check_host(check: Check) -> str:
    """The host a check connects to: an IP literal (no brackets) or a name, lower case."""
    if check.kind == "http":
        return HttpTarget.parse(check.target).host.lower()
    host, _, _ = check.target.rpartition(":")
    return host.strip("[]").lower()


def check_field(check: Check, index: int) -> str:
    """The request field a check's host came from, for errors: ``checks[0].http``."""
    return f"checks[{index}].{check.kind}"


def as_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal, else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _same_host(candidate: IPAddress, address: IPAddress) -> bool:
    if candidate == address:
        return True
    # One machine's loopback is one machine: an instance on 127.0.0.1 may be
    # checked at ::1 or 127.0.0.2 (what "localhost" resolves to varies).
    return candidate.is_loopback and address.is_loopback


def check_host_addresses(
    check: Check, index: int, address: IPAddress, resolved: Sequence[IPAddress]
) -> None:
    """Refuse a check whose host is not the instance's own ``address``.

    ``resolved``: what the host is — the literal itself, or every address its
    name resolved to. Every one must be the instance's: the checker connects to
    whichever the resolver lists first, so one foreign address is enough to aim
    it elsewhere.
    """
    field = check_field(check, index)
    host = check_host(check)
    if not resolved:
        raise InvalidInput(f"{field}: the host {host!r} resolves to no address", field=field)
    foreign = sorted({str(a) for a in resolved if not _same_host(a, address)})
    if foreign:
        shown = host if as_ip(host) is not None else f"{host} ({', '.join(foreign)})"
        raise InvalidInput(
            f"{field}: a check must target the instance's own address {address}, not {shown} "
            "(checks of other hosts need an operator token or checks_any_host = true)",
            field=field,
        )
