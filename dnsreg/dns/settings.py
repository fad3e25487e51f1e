"""The parts of the configuration that shape DNS answers, and Consul's alternative names. Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from dnsreg.core.names import Name


@dataclass(frozen=True, slots=True)
class Settings:
    """The parts of the configuration that shape answers."""

    origin: Name
    ns_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (
        ipaddress.IPv4Address("127.0.0.1"),
    )
    negative_ttl: int = 5
    ns_ttl: int = 3600
    max_answers: int | None = None
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    hostmaster: str = "hostmaster"
    ns_label: str = "ns"
    #: Consul's names (config ``alt_domain``): the same registry answered under more
    #: origins, ``service[.dc1].<alt_domain>``, by the same lookup (see with_alt_domain).
    alt: tuple[Settings, ...] = ()
    #: ``_<svc>._<tag>`` selects by tag, as Consul's RFC 2782 form does.
    rfc2782_tags: bool = False

    @property
    def ns_name(self) -> Name:
        return (self.ns_label, *self.origin)


def with_alt_domain(settings: Settings, alt_domain: Name, datacenter: str = "dc1") -> Settings:
    """``settings`` that also answer ``[<tag>.]<svc>.service[.<dc>].<alt_domain>``.

    Consul's names (Consul docs, "DNS static lookups": ``[tag.]<service>.service
    [.<datacenter>].<domain>``). Each alternative origin is a zone apex with its
    own SOA and NS, and below it names mean what they mean below the primary origin.
    """
    alts = tuple(
        replace(settings, origin=origin, rfc2782_tags=True)
        for origin in (("service", *alt_domain), ("service", datacenter, *alt_domain))
    )
    return replace(settings, alt=alts)
