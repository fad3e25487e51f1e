"""dnsreg on a secured etcd: TLS with client certificates (``etcds://``, ``etcd_ca``,
``etcd_cert``, ``etcd_key``) and etcd's own users (``etcd_user``/``etcd_password``).

Real etcd processes started with ``--client-cert-auth`` or with auth enabled by
``etcdctl user add`` / ``auth enable``; real dnsreg servers; nothing mocked.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import pytest

from dnsreg.app import Server
from dnsreg.core.errors import ConfigError
from tests.certs import Pki, make_pki
from tests.helpers import make_config, start_server
from tests.store.etcd_fixtures import EtcdCluster, needs_etcd

ETCDCTL = shutil.which("etcdctl")
pytestmark = [
    needs_etcd,
    pytest.mark.skipif(
        ETCDCTL is None, reason="etcdctl is not installed: apt-get install etcd-client"
    ),
]
PASSWORD = "pw-9f3c1e"  # must never show up in dnsreg's log


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def tls_etcd(tmp_path: Path, pki: Pki) -> AsyncIterator[EtcdCluster]:
    """One member serving clients over TLS only, and only to certificates its CA signed."""
    cluster = EtcdCluster(
        tmp_path / "etcd-tls",
        1,
        extra_args=[
            "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
            "--client-cert-auth", "--trusted-ca-file", str(pki.ca),
        ],
        tls=pki.client_context(),
    )  # fmt: skip
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()


def etcdctl(cluster: EtcdCluster, *args: str, user: str | None = None) -> str:
    assert ETCDCTL is not None
    command = [ETCDCTL, "--endpoints", cluster.endpoints, *args]
    if user is not None:
        command[1:1] = ["--user", user]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=20, env={**os.environ, "ETCDCTL_API": "3"}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
async def auth_etcd(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    """A member with auth on: root, and a user ``dnsreg`` whose role may use /dnsreg/ only."""
    cluster = EtcdCluster(tmp_path / "etcd-auth", 1)
    try:
        await cluster.start()
        etcdctl(cluster, "user", "add", f"root:{PASSWORD}-root")
        etcdctl(cluster, "auth", "enable")
        root = f"root:{PASSWORD}-root"
        etcdctl(cluster, "role", "add", "dnsreg", user=root)
        etcdctl(cluster, "role", "grant-permission", "dnsreg", "--prefix=true", "readwrite",
                "/dnsreg/", user=root)  # fmt: skip
        etcdctl(cluster, "user", "add", f"dnsreg:{PASSWORD}", user=root)
        etcdctl(cluster, "user", "grant-role", "dnsreg", "dnsreg", user=root)
        yield cluster
    finally:
        await cluster.close()


async def register_and_resolve(server: Server, address: str) -> list[str]:
    """Register through the server's HTTP API, then ask its DNS port."""
    url = f"http://127.0.0.1:{server.http_port}/v1/services/web/instances/w1"
    body = {"address": address, "port": 80}
    async with aiohttp.ClientSession() as http, http.put(url, json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
    query = dns.message.make_query("web.service.local", "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=server.dns_port, timeout=3)
    return sorted(rr.address for rrset in reply.answer for rr in rrset)


def tls_store(cluster: EtcdCluster) -> str:
    return f"etcds://{cluster.endpoints}/dnsreg"


# ------------------------------------------------------------------------ TLS
async def test_registers_and_answers_through_etcd_over_tls_with_a_client_cert(
    tmp_path: Path, pki: Pki, tls_etcd: EtcdCluster
) -> None:
    config = make_config(
        tmp_path, store=tls_store(tls_etcd),
        etcd_ca=pki.ca, etcd_cert=pki.client_cert, etcd_key=pki.client_key,
    )  # fmt: skip
    server = await start_server(config)
    try:
        assert await register_and_resolve(server, "10.0.0.21") == ["10.0.0.21"]
        # It really is in etcd (read back over TLS with the test's own client cert).
        prefix = {"key": "L2Ruc3JlZy8=", "range_end": "L2Ruc3JlZzA=", "count_only": True}
        body = await tls_etcd.call("/v3/kv/range", prefix)  # /dnsreg/ .. /dnsreg0
        assert int(body["count"]) >= 1
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"etcd_ca": "ca"}, "etcd wants a client certificate it trusts (etcd_cert, etcd_key)"),
        ({"etcd_ca": "ca", "etcd_cert": "stranger_cert", "etcd_key": "stranger_key"},
         "etcd wants a client certificate it trusts"),
        ({"etcd_cert": "client_cert", "etcd_key": "client_key"},
         "the server's certificate is not trusted (etcd_ca)"),
    ],
)  # fmt: skip
async def test_tls_etcd_refuses_clearly_without_the_right_certificates(
    tmp_path: Path, pki: Pki, tls_etcd: EtcdCluster, settings: dict[str, str], message: str
) -> None:
    files = {name: getattr(pki, attr) for name, attr in settings.items()}
    server = Server(make_config(tmp_path, store=tls_store(tls_etcd), **files))
    with pytest.raises(ConfigError) as caught:
        await server.start()
    assert message in caught.value.message
    assert f"etcd at https://{tls_etcd.endpoints}: TLS failed" in caught.value.message


async def test_plain_etcd_url_with_tls_files_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    server = Server(make_config(tmp_path, store="etcd://127.0.0.1:2379/x", etcd_ca=pki.ca))
    with pytest.raises(ConfigError, match="need TLS: use an etcds://"):
        await server.start()


# ---------------------------------------------------------------- user/password
async def test_user_and_password_work_and_survive_an_etcd_restart(
    tmp_path: Path, auth_etcd: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(
        tmp_path, store=f"etcd://{auth_etcd.endpoints}/dnsreg",
        etcd_user="dnsreg", etcd_password=PASSWORD,
    )  # fmt: skip
    server = await start_server(config)
    try:
        assert await register_and_resolve(server, "10.0.0.31") == ["10.0.0.31"]
        # etcd keeps simple tokens in memory: after a restart dnsreg's token is
        # invalid, and the next write must log in again by itself.
        member = auth_etcd.members[0]
        await auth_etcd.stop(member)
        await auth_etcd.restart(member)
        assert await register_and_resolve(server, "10.0.0.32") == ["10.0.0.32"]
    finally:
        await server.stop()
    assert "authenticating again" in caplog.text
    assert PASSWORD not in caplog.text
    assert repr(config).count(PASSWORD) == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"etcd_user": "dnsreg", "etcd_password": "wrong"},
         "etcd refused user 'dnsreg': authentication failed, invalid user ID or password"),
        ({}, "etcd requires authentication (user name is empty): set etcd_user and etcd_password"),
        ({"etcd_user": "dnsreg", "etcd_password": PASSWORD, "prefix": "elsewhere"},
         "etcd denied user 'dnsreg' access (permission denied): grant its role readwrite on "
         "the prefix /elsewhere/"),
    ],
)  # fmt: skip
async def test_etcd_auth_failures_are_clear_config_errors(
    tmp_path: Path,
    auth_etcd: EtcdCluster,
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, Any],
    message: str,
) -> None:
    prefix = settings.pop("prefix", "dnsreg")
    server = Server(
        make_config(tmp_path, store=f"etcd://{auth_etcd.endpoints}/{prefix}", **settings)
    )
    with pytest.raises(ConfigError) as caught:
        await server.start()
    assert caught.value.message == message
    assert PASSWORD not in caught.value.message
    assert PASSWORD not in caplog.text


def test_wrong_password_from_the_command_line_exits_2(
    tmp_path: Path, auth_etcd: EtcdCluster
) -> None:
    (tmp_path / "zones").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dnsreg", "serve",
         "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path / "zones"),
         "--store", f"etcd://{auth_etcd.endpoints}/dnsreg", "--etcd-user", "dnsreg"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={**os.environ, "DNSREG_ETCD_PASSWORD": "not-it"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "etcd refused user 'dnsreg': authentication failed" in result.stderr
    assert "not-it" not in result.stderr
    assert "Traceback" not in result.stderr


async def test_credentials_before_etcd_turns_auth_on_then_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """etcd_user set while etcd has auth off: dnsreg says so and works; once an operator
    turns auth on, dnsreg logs in by itself."""
    caplog.set_level(logging.INFO)
    cluster = EtcdCluster(tmp_path / "etcd-later", 1)
    try:
        await cluster.start()
        config = make_config(
            tmp_path, store=f"etcd://{cluster.endpoints}/dnsreg",
            etcd_user="dnsreg", etcd_password=PASSWORD,
        )  # fmt: skip
        server = await start_server(config)
        try:
            assert "etcd has authentication off" in caplog.text
            assert await register_and_resolve(server, "10.0.0.41") == ["10.0.0.41"]
            root = f"root:{PASSWORD}-root"
            etcdctl(cluster, "user", "add", root)
            etcdctl(cluster, "role", "add", "dnsreg")
            etcdctl(cluster, "role", "grant-permission", "dnsreg", "--prefix=true", "readwrite",
                    "/dnsreg/")  # fmt: skip
            etcdctl(cluster, "user", "add", f"dnsreg:{PASSWORD}")
            etcdctl(cluster, "user", "grant-role", "dnsreg", "dnsreg")
            etcdctl(cluster, "auth", "enable")
            assert await register_and_resolve(server, "10.0.0.42") == ["10.0.0.42"]
            assert "authenticated as 'dnsreg'" in caplog.text
        finally:
            await server.stop()
    finally:
        await cluster.close()
    assert PASSWORD not in caplog.text
