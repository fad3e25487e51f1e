"""The client side: what a service that only registers or discovers needs.

The Python client (:class:`Client`, with :class:`Lease` for keepalive), the
``dnsreg`` command's client commands (:mod:`commands`), ``dnsreg run``
(:mod:`run`), the registrar and its service files (:mod:`registrar`,
:mod:`service_files`), what a client asks to register (:mod:`registration`), and
the SSE parser of the event stream (:mod:`sse`).

May import: :mod:`dnsreg.core` only. Never the server side (``dns``, ``http``,
``health``, ``store``, ``app``), so a user who only registers can use this alone.
"""

from dnsreg.client.client import (
    DEFAULT_API,
    DEFAULT_DNS,
    DEFAULT_DOMAIN,
    Client,
    Event,
    Instances,
    Services,
    Target,
)
from dnsreg.client.lease import Lease
from dnsreg.client.registration import InstanceSpec
from dnsreg.client.tls import TlsFailure

# The errors a client sees, importable from where the client is.
from dnsreg.core.errors import (
    Conflict,
    DnsregError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
)

__all__ = [
    "DEFAULT_API",
    "DEFAULT_DNS",
    "DEFAULT_DOMAIN",
    "Client",
    "Conflict",
    "DnsregError",
    "Event",
    "Forbidden",
    "InstanceSpec",
    "Instances",
    "InvalidInput",
    "Lease",
    "NotFound",
    "ServerError",
    "Services",
    "Target",
    "TlsFailure",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
]
