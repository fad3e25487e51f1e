"""How dnsreg reaches a secured etcd: TLS (``etcds://``) and user/password.

etcd's client port speaks TLS when started with ``--cert-file``/``--key-file``,
and with ``--client-cert-auth`` it requires a client certificate signed by its
``--trusted-ca-file``. With ``etcdctl auth enable`` every request needs a token
from ``POST /v3/auth/authenticate`` (etcd's grpc-gateway reads it from the
``Authorization`` header). Settings: ``etcd_ca``, ``etcd_cert``, ``etcd_key``,
``etcd_user``, ``etcd_password``. The password and the token are secrets: they
appear in no log line, error message or repr.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from dnsreg.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    tls: bool = False  # etcds:// — set from the URL scheme by the store
    ca: Path | None = None  # trust this CA instead of the system's
    cert: Path | None = None  # client certificate (etcd --client-cert-auth)
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.user is None:
            return None
        return self.user, self.password or ""

    def check(self) -> None:
        """Every combination that cannot work is refused here, before any connection."""
        if not self.tls and (self.ca or self.cert or self.key):
            raise ConfigError(
                "etcd_ca, etcd_cert and etcd_key need TLS: use an etcds://host:port/prefix store"
            )
        if (self.cert is None) != (self.key is None):
            missing = "etcd_key" if self.key is None else "etcd_cert"
            raise ConfigError(f"etcd_cert and etcd_key go together: {missing} is not set")
        if (self.user is None) != (self.password is None):
            missing = "etcd_password" if self.password is None else "etcd_user"
            raise ConfigError(f"etcd_user and etcd_password go together: {missing} is not set")
        for name, path in (("etcd_ca", self.ca), ("etcd_cert", self.cert), ("etcd_key", self.key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: {path} is not a readable file")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for etcds:// (None for plain etcd://)."""
        self.check()
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"etcd_ca {self.ca}: cannot load the CA ({_reason(exc)})") from exc
        if self.cert is not None and self.key is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"etcd_cert {self.cert} / etcd_key {self.key}: cannot load the client "
                    f"certificate and key ({_reason(exc)})"
                ) from exc
        return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
