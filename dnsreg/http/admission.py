"""Check hosts at registration: the name lookups behind SPEC §7's "checks are no window".

The rule itself is pure (:func:`dnsreg.core.admission.check_host_addresses`);
this module does the I/O it needs: a check whose host is a name is resolved
with ``getaddrinfo`` in the loop's thread pool (a blocking call, so never on
the event loop) and cut off at a timeout, so a slow resolver delays only that
registration. Registration paths call :func:`admit_checks` once, after the
body validated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket

from dnsreg.core.acl import Principal
from dnsreg.core.admission import (
    AdmissionPolicy,
    as_ip,
    check_field,
    check_host,
    check_host_addresses,
)
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import IPAddress, Registration

#: A name that does not resolve within this is refused: registration is no place to wait.
RESOLVE_TIMEOUT = 2.0


async def resolve_host(host: str, *, within: float = RESOLVE_TIMEOUT) -> list[IPAddress]:
    """Every address ``host`` resolves to (OSError / TimeoutError when it does not)."""
    literal = as_ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a zone ("fe80::1%eth0"): compare the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


def may_check_any_host(
    policy: AdmissionPolicy, principal: Principal | None, *, tokens: bool
) -> bool:
    """SPEC §7: checks may target other hosts with ``checks_any_host``, or when the
    registering *token* is operator. ``tokens``: an ACL file is in force. Without one
    there is no token: the loopback-open mode acts as operator for writes, not for
    aiming checks elsewhere."""
    if policy.checks_any_host:
        return True
    return tokens and principal is not None and principal.is_operator


async def admit_checks(
    reg: Registration, *, any_host: bool, within: float = RESOLVE_TIMEOUT
) -> Registration:
    """``reg``, its checks vetted: InvalidInput (400 naming the field) for a check that
    targets another host. A check whose host is a name is pinned to the instance's
    address (``Check.connect_to``), so what the name resolves to later does not matter.

    ``any_host``: the operator allowed other hosts (config ``checks_any_host``, or an
    operator token): nothing is looked up or pinned then.
    """
    if any_host or not reg.checks:
        return reg
    checks = []
    for index, check in enumerate(reg.checks):
        if check.kind == "ttl":  # reported by the service itself: connects nowhere
            checks.append(check)
            continue
        host = check_host(check)
        field = check_field(check, index)
        try:
            resolved = await resolve_host(host, within=within)
        except TimeoutError as exc:
            raise InvalidInput(
                f"{field}: the host {host!r} did not resolve within {within:g}s", field=field
            ) from exc
        except (OSError, UnicodeError) as exc:
            raise InvalidInput(f"{field}: the host {host!r} does not resolve", field=field) from exc
        check_host_addresses(check, index, reg.address, resolved)
        if as_ip(host) is None:
            check = dataclasses.replace(check, connect_to=str(reg.address))
        checks.append(check)
    return dataclasses.replace(reg, checks=tuple(checks))
