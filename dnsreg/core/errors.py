"""The one exception family of dnsreg.

Every error the product raises on purpose derives from :class:`DnsregError`.
Each subclass names what went wrong; the HTTP status and the log level that go
with it are decided in exactly one place (``api.error_response``), never here.
"""

from __future__ import annotations

import errno
from typing import Any

#: OS errors that say this process or host ran out of something (descriptors,
#: buffers, memory): a probe or an accept that fails with one learnt nothing
#: about its peer.
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class DnsregError(Exception):
    """Root of every error dnsreg raises deliberately."""

    def __init__(self, message: str, *, field: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail


class InvalidInput(DnsregError):
    """A request or a setting is malformed (a bad name, a bad duration, ...)."""


class NotFound(DnsregError):
    """The named service or instance is not registered."""


class Unauthorized(DnsregError):
    """The request carries no token, or one the ACL file does not know."""


class Forbidden(DnsregError):
    """The token is known but lacks the right for what it asks (``detail`` names it)."""


class Conflict(DnsregError):
    """The request would make two names collide (id equals a tag, static clash)."""


class PayloadTooLarge(DnsregError):
    """The request body is larger than the server accepts."""


class UnsupportedMediaType(DnsregError):
    """The request body is not JSON."""


class Unavailable(DnsregError):
    """The store cannot take writes right now."""


class ZoneError(DnsregError):
    """A zone file could not be loaded; the message names the file and line."""


class ConfigError(DnsregError):
    """The server configuration is invalid."""


class Unreachable(DnsregError):
    """The client could not reach the server (refused, reset, timed out)."""


class ServerError(DnsregError):
    """The server answered with an error status the client has no better name for."""


class StoreCorrupt(DnsregError):
    """The store's file is damaged or not dnsreg's; the server refuses to start (exit 2)."""


class DataDirLocked(DnsregError):
    """Another server holds the data directory (one server per data directory)."""


class RequestTimeout(DnsregError):
    """The client did not send its request body in time."""


class PrerequisiteFailed(DnsregError):
    """A DNS UPDATE prerequisite (RFC 2136 §3.2) does not hold.

    ``detail`` is the name of the rcode the RFC prescribes for it: ``YXDOMAIN``,
    ``NXDOMAIN``, ``YXRRSET`` or ``NXRRSET``.
    """


class NotInZone(DnsregError):
    """A DNS UPDATE names a zone this server is not authoritative for (``detail``
    ``NOTAUTH``, RFC 2136 §3.1.1) or a record outside its zone (``NOTZONE``, §3.2.5)."""


class Refused(DnsregError):
    """A DNS request the server will not carry out: an update of a name that is no
    instance's, or one whose data admission refuses (RFC 2136 §3.3: REFUSED)."""
