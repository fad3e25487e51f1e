"""Certificates made in the test run with trustme: a CA, a server cert, client certs."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (what clients trust, what tls_client_ca names)
    server_cert: Path  # chain for 127.0.0.1 / localhost
    server_key: Path
    client_cert: Path  # signed by the same CA
    client_key: Path
    other_ca: Path  # a CA nobody trusts
    stranger_cert: Path  # a client cert signed by other_ca
    stranger_key: Path

    def client_context(self) -> ssl.SSLContext:
        """Trusts the CA and presents the client certificate (for test plumbing)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.example")
    stranger = other.issue_cert("stranger.example")
    pki = Pki(*(root / name for name in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key",
        "other-ca.pem", "stranger.pem", "stranger.key",
    )))  # fmt: skip
    ca.cert_pem.write_to_path(str(pki.ca))
    server.private_key_pem.write_to_path(str(pki.server_key))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(pki.server_cert), append=i > 0)
    client.private_key_pem.write_to_path(str(pki.client_key))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    other.cert_pem.write_to_path(str(pki.other_ca))
    stranger.private_key_pem.write_to_path(str(pki.stranger_key))
    stranger.cert_chain_pems[0].write_to_path(str(pki.stranger_cert))
    return pki
