"""TLS and the bearer token on the client side: ``--ca``, ``--cert``/``--key``, ``--token``.

The server's side of tokens (who may write what) lives in the server; a
client only sends ``Authorization: Bearer <token>`` (RFC 6750 §2.1). The token
defaults to ``DNSREG_TOKEN``, so it need not appear on a command line (where
``ps`` shows it).
"""

from __future__ import annotations

import os
import ssl

import aiohttp

from dnsreg.core.errors import DnsregError, Unreachable

TOKEN_ENV = "DNSREG_TOKEN"


class TlsFailure(Unreachable):
    """The TLS handshake with the server failed: untrusted certificate, or a client
    certificate required and missing. Retrying as-is will not help; the message says
    which flag would."""


def default_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def client_context(
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext | None:
    """The TLS context for an ``https://`` API: system CAs plus ``ca``, and a client cert.

    None when nothing was given, so aiohttp uses its default (system CAs).
    Unreadable or invalid files raise :class:`DnsregError` naming the file.
    """
    if ca is None and cert is None and key is None:
        return None
    if key is not None and cert is None:
        raise DnsregError("--key needs --cert (the client certificate it belongs to)")
    try:
        context = ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise DnsregError(f"--ca {ca}: cannot load the CA certificate ({_reason(exc)})") from exc
    if cert is not None:
        try:
            context.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
        except (ssl.SSLError, OSError) as exc:
            raise DnsregError(
                f"--cert {cert}: cannot load the client certificate and key ({_reason(exc)})"
            ) from exc
    return context


def tls_failure(api: str, exc: BaseException) -> TlsFailure | None:
    """A clear error for a TLS failure talking to ``api``, or None if ``exc`` is not one."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        return TlsFailure(
            f"cannot reach {api}: the server's TLS certificate is not trusted ({reason}); "
            "give the CA that signed it with --ca FILE (Python: Client(ca=...))"
        )
    text = f"{exc} {exc.__cause__ or ''}".lower()
    if "certificate required" in text or "bad certificate" in text or "unknown ca" in text:
        return TlsFailure(
            f"cannot reach {api}: the server refused the TLS connection "
            "(it requires a client certificate it trusts): give one with --cert FILE --key FILE"
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
        if "wrong version number" in text and api.startswith("https://"):
            # The answer was not TLS at all: most likely a plain-HTTP server.
            plain = "http://" + api.removeprefix("https://")
            return TlsFailure(
                f"cannot reach {api}: the server does not speak TLS there "
                f"(is it plain HTTP? try --api {plain})"
            )
        return TlsFailure(f"cannot reach {api}: TLS failed: {_reason(cause)}")
    return None


def disconnect_hint(api: str, exc: BaseException, *, has_cert: bool) -> str | None:
    """Why an https:// server may have hung up on us, when that is the likely reason.

    With TLS 1.3 a server checks the client certificate after the handshake
    (RFC 8446 §4.4.2.4), and its "certificate required" alert often arrives as a
    plain disconnect, so say what most likely happened.
    """
    if not api.startswith("https://") or has_cert:
        return None
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return (
            f"cannot reach {api}: the server closed the connection ({exc}); "
            "if it requires client certificates (tls_client_ca), give one with "
            "--cert FILE --key FILE"
        )
    return None


def _reason(exc: BaseException) -> str:
    # aiohttp's ClientConnectorSSLError is an ssl.SSLError without .reason.
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
