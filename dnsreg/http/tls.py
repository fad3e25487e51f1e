"""HTTPS for the API: the server's TLS context, built once at start from the settings.

``tls_cert`` + ``tls_key`` serve the API over HTTPS; ``tls_client_ca`` also
requires every client to present a certificate signed by that CA (mutual TLS,
RFC 8446 §4.3.2 CertificateRequest). Any problem with these files is a
:class:`~dnsreg.core.errors.ConfigError` naming the file, raised before the
server opens a socket.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dnsreg.core.errors import ConfigError


def server_context(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> ssl.SSLContext | None:
    """The API's TLS context, or None for plain HTTP (no ``tls_cert`` and no ``tls_key``)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key (HTTPS) as well")
        return None
    if cert is None or key is None:
        missing = "tls_key" if key is None else "tls_cert"
        raise ConfigError(f"tls_cert and tls_key go together: {missing} is not set")
    for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", client_ca)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}: {path} is not a readable file")
    # PROTOCOL_TLS_SERVER with Python's defaults: TLS 1.2 and later, no compression.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls_cert {cert} / tls_key {key}: cannot load the certificate and key ({_reason(exc)})"
        ) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"tls_client_ca {client_ca}: cannot load the CA ({_reason(exc)})"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def reload_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """SIGHUP: load the (renewed) certificate and key into the live context.

    OpenSSL replaces the context's certificate and key, so connections accepted
    from now on present the new pair and open ones carry on. A file that does
    not load raises ConfigError and leaves the context serving the old pair.
    """
    try:
        # Load into a scratch context first: a failure half-way through must not
        # leave the live one with a certificate that does not match its key.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls_cert {cert} / tls_key {key}: cannot load the certificate and key ({_reason(exc)})"
        ) from exc
