"""The API over HTTPS: the server with tls_cert/tls_key (and tls_client_ca), reached by
the Python client and the ``dnsreg`` CLI over real loopback sockets, with certificates
made in the test (trustme)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from dnsreg.app import Server
from dnsreg.client import Client, TlsFailure
from dnsreg.core.errors import ConfigError, DnsregError, Unreachable
from tests.certs import Pki, make_pki
from tests.helpers import Process, make_config, spawn_server, start_server, wait_until


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def https(tmp_path: Path, pki: Pki) -> AsyncIterator[Server]:
    config = make_config(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key)
    server = await start_server(config)
    yield server
    await server.stop()


@pytest.fixture
async def mtls(tmp_path: Path, pki: Pki) -> AsyncIterator[Server]:
    config = make_config(
        tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    )
    server = await start_server(config)
    yield server
    await server.stop()


def url(server: Server) -> str:
    return f"https://127.0.0.1:{server.http_port}"


async def a_records(server: Server, name: str) -> list[str]:
    query = dns.message.make_query(name, "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=server.dns_port, timeout=3)
    return sorted(rr.address for rrset in reply.answer for rr in rrset)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DNSREG_")}
    return subprocess.run(
        [sys.executable, "-m", "dnsreg", *args],
        capture_output=True, text=True, timeout=30, env={**base, **(env or {})},
    )  # fmt: skip


async def test_python_client_registers_over_https_when_given_the_ca(
    https: Server, pki: Pki
) -> None:
    async with Client(url(https), ca=pki.ca) as c:
        reply = await c.register("web", "w1", port=8080, address="10.0.0.7")
        assert reply["instance"]["address"] == "10.0.0.7"
        assert [i["id"] for i in await c.instances("web")] == ["w1"]
        assert (await c.status())["status"] == "ok"
    assert await a_records(https, "web.service.local") == ["10.0.0.7"]


async def test_python_client_without_the_ca_fails_clearly_and_changes_nothing(
    https: Server,
) -> None:
    async with Client(url(https)) as c:
        with pytest.raises(TlsFailure) as caught:
            await c.register("web", "w1", port=8080, address="10.0.0.7")
    assert "certificate is not trusted" in caught.value.message
    assert "--ca" in caught.value.message
    assert len(https.registry) == 0


async def test_plain_http_to_an_https_server_is_refused(https: Server) -> None:
    async with Client(f"http://127.0.0.1:{https.http_port}") as c:
        with pytest.raises(Unreachable):
            await c.register("web", "w1", port=8080, address="10.0.0.7")
    assert len(https.registry) == 0


async def test_client_certificate_required_with_tls_client_ca(mtls: Server, pki: Pki) -> None:
    # No certificate: the server hangs up; the client says what is probably missing.
    async with Client(url(mtls), ca=pki.ca) as c:
        with pytest.raises(Unreachable) as caught:
            await c.register("web", "w1", port=8080, address="10.0.0.7")
    assert "--cert" in caught.value.message
    # A certificate from a CA the server does not trust: refused as well.
    async with Client(url(mtls), ca=pki.ca, cert=pki.stranger_cert, key=pki.stranger_key) as c:
        with pytest.raises(Unreachable):
            await c.register("web", "w1", port=8080, address="10.0.0.7")
    assert len(mtls.registry) == 0
    assert await a_records(mtls, "web.service.local") == []
    # A certificate the server's tls_client_ca signed: in.
    async with Client(url(mtls), ca=pki.ca, cert=pki.client_cert, key=pki.client_key) as c:
        await c.register("web", "w1", port=8080, address="10.0.0.7")
        assert [i["id"] for i in await c.instances("web")] == ["w1"]
    assert await a_records(mtls, "web.service.local") == ["10.0.0.7"]


async def test_bad_client_tls_files_are_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(DnsregError, match=r"--ca .*nope\.pem"):
        Client("https://127.0.0.1:1", ca=tmp_path / "nope.pem")
    with pytest.raises(DnsregError, match=r"--cert .*cannot load"):
        Client("https://127.0.0.1:1", cert=pki.ca, key=pki.client_key)  # a CA is no key pair


# ------------------------------------------------------------- the real command line
def test_cli_over_https_and_with_client_certificates(tmp_path: Path, pki: Pki) -> None:
    """``dnsreg serve --tls-cert … --tls-client-ca …`` and the client commands, as a user."""
    (tmp_path / "zones").mkdir()
    server: Process = spawn_server(
        tmp_path,
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca),
    )  # fmt: skip
    try:
        assert f"HTTP on https://127.0.0.1:{server.http_port}" in server.log.read_text()
        api = f"https://127.0.0.1:{server.http_port}"
        with_cert = ["--ca", str(pki.ca), "--cert", str(pki.client_cert)]
        with_cert += ["--key", str(pki.client_key)]
        ok = cli("register", "web", "--port", "80", "--address", "10.0.0.9", "--id", "a",
                 "--api", api, *with_cert)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert "registered web/a at 10.0.0.9:80" in ok.stdout
        shown = cli("show", "web", "--api", api, *with_cert)
        assert shown.returncode == 0, shown.stderr
        assert "10.0.0.9:80" in shown.stdout
        # The same through the environment (DNSREG_API, DNSREG_CA, DNSREG_CERT, DNSREG_KEY).
        env = {"DNSREG_API": api, "DNSREG_CA": str(pki.ca), "DNSREG_CERT": str(pki.client_cert),
               "DNSREG_KEY": str(pki.client_key)}  # fmt: skip
        listed = cli("ls", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "web" in listed.stdout
        # Without the CA: exit 1, a message naming --ca.
        untrusted = cli("ls", "--api", api)
        assert untrusted.returncode == 1
        assert "not trusted" in untrusted.stderr
        assert "--ca" in untrusted.stderr
        # Without a client certificate: refused, nothing changes.
        refused = cli("deregister", "web", "a", "--api", api, "--ca", str(pki.ca))
        assert refused.returncode == 1
        assert "--cert" in refused.stderr
        still = cli("show", "web", "--api", api, *with_cert)
        assert "10.0.0.9:80" in still.stdout
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "{d}/missing.pem", "--tls-key", "{key}"], "tls_cert: {d}/missing.pem"),
        (["--tls-cert", "{ca}", "--tls-key", "{key}"], "cannot load the certificate and key"),
        (["--tls-cert", "{cert}"], "tls_key is not set"),
        (["--tls-client-ca", "{ca}"], "tls_client_ca needs tls_cert and tls_key"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{key}"],
         "tls_client_ca"),
    ],
)  # fmt: skip
def test_bad_tls_settings_stop_the_server_with_exit_2(
    tmp_path: Path, pki: Pki, args: list[str], message: str
) -> None:
    names = {"d": str(tmp_path), "key": str(pki.server_key), "cert": str(pki.server_cert),
             "ca": str(pki.ca)}  # fmt: skip
    result = cli(
        "serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path),
        *(a.format(**names) for a in args),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message.format(**names) in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving zone" not in result.stderr


def test_tls_settings_come_from_the_environment_too(tmp_path: Path, pki: Pki) -> None:
    result = cli(
        "serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path),
        env={"DNSREG_TLS_CERT": str(pki.server_cert), "DNSREG_TLS_KEY": str(tmp_path / "k.pem")},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"tls_key: {tmp_path / 'k.pem'} is not a readable file" in result.stderr


async def test_server_start_raises_config_error_in_process(tmp_path: Path, pki: Pki) -> None:
    config = make_config(tmp_path, tls_cert=pki.server_cert, tls_key=tmp_path / "gone.key")
    server = Server(config)
    with pytest.raises(ConfigError, match="tls_key"):
        await server.start()
    assert server.store is None
    assert server.http_runner is None


def test_sighup_reloads_a_renewed_certificate_and_keeps_the_old_one_if_broken(
    tmp_path: Path, pki: Pki
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    (tmp_path / "zones").mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    server = spawn_server(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    api = f"https://127.0.0.1:{server.http_port}"
    try:
        assert cli("ls", "--api", api, "--ca", str(pki.ca)).returncode == 0
        # A broken renewal: the server says why and keeps serving the old pair.
        cert.write_text("not a certificate\n")
        server.signal(signal.SIGHUP)
        wait_until(lambda: "TLS reload failed" in server.log.read_text())
        assert cli("ls", "--api", api, "--ca", str(pki.ca)).returncode == 0
        # A good renewal, from another CA: new connections present it.
        renewed = make_pki(tmp_path / "renewed")
        cert.write_bytes(renewed.server_cert.read_bytes())
        key.write_bytes(renewed.server_key.read_bytes())
        server.signal(signal.SIGHUP)
        wait_until(lambda: "TLS certificate reloaded" in server.log.read_text())
        assert cli("ls", "--api", api, "--ca", str(renewed.ca)).returncode == 0
        old = cli("ls", "--api", api, "--ca", str(pki.ca))
        assert old.returncode == 1
        assert "not trusted" in old.stderr
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
