"""What etcd's auth and TLS refusals mean, in words a user can act on (pure helpers).

Used by :mod:`dnsreg.store.etcd_client`. etcd reports auth problems as gRPC
statuses through its JSON gateway (``code`` and ``message``); TLS problems
surface as aiohttp/ssl exceptions. No message here holds a password or token.
"""

from __future__ import annotations

import ssl

import aiohttp

INVALID_ARGUMENT = 3  # also "authentication failed" and "user name is empty"
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16  # "invalid auth token": the token expired or etcd restarted


def token_rejected(code: int, message: str) -> bool:
    return code == UNAUTHENTICATED or "invalid auth token" in message


def needs_auth(message: str) -> bool:
    # etcd 3.4 answers a request without a token, when auth is on, with
    # InvalidArgument "user name is empty"; newer releases also "user name not found".
    return "user name is empty" in message or "authentication failed" in message


def auth_message(message: str, code: int, credentials: tuple[str, str] | None) -> str:
    reason = strip(message)
    if credentials is None and needs_auth(message):
        return f"etcd requires authentication ({reason}): set etcd_user and etcd_password"
    if code == PERMISSION_DENIED:
        who = f"user {credentials[0]!r}" if credentials else "this client"
        return f"etcd denied {who} access ({reason}): grant its role readwrite on the prefix"
    return reason


def strip(message: str) -> str:
    return message.removeprefix("etcdserver: ")


def tls_alert(exc: BaseException) -> bool:
    """A TLS alert from the peer that surfaces on read (TLS 1.3 checks client certs late)."""
    text = str(exc).lower()
    return "alert" in text and ("certificate" in text or "handshake" in text)


def tls_reason(exc: BaseException) -> str:
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientOSError) and exc.__cause__ is not None:
        cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = cause.verify_message or cause.reason
        return f"{reason}: the server's certificate is not trusted (etcd_ca)"
    text = str(getattr(cause, "reason", None) or cause).lower().replace("_", " ")
    if "certificate required" in text or "bad certificate" in text:
        return f"{text}: etcd wants a client certificate it trusts (etcd_cert, etcd_key)"
    return text
