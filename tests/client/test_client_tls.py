"""Every client tool speaks to a secured API: the bearer token (``--token``/``DNSREG_TOKEN``,
``Client(token=)``), and ``dnsreg run`` / ``dnsreg registrar`` over HTTPS with a client
certificate. Real sockets, real processes; certificates from trustme."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from dnsreg.app import Server
from dnsreg.client import Client
from tests.certs import Pki, make_pki
from tests.helpers import async_wait_until, make_config, start_server


class Recorder:
    """A stand-in API on a real socket that notes the Authorization header of each request.

    The server's side of tokens (which token may do what) is tested with the
    server; here only what the client sends is in question.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(self.app)
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get("Authorization")))
        if request.path == "/v1/events":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(
                b'id: 1\nevent: registered\ndata: {"revision": 1, "service": "web", '
                b'"id": "a", "instance": null}\n\n'
            )
            return resp
        if request.path == "/v1/services":
            return web.json_response({"revision": 1, "services": {}})
        return web.json_response(
            {"revision": 1, "instance": {"service": "web", "id": "a", "address": "10.0.0.1",
                                         "port": 80, "ttl": 0}}
        )  # fmt: skip

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    await r.start()
    yield r
    await r.runner.cleanup()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def mtls(tmp_path: Path, pki: Pki) -> AsyncIterator[Server]:
    config = make_config(
        tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    )
    server = await start_server(config)
    yield server
    await server.stop()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSREG_")}
    return {**env, **extra}


async def test_python_client_sends_the_token_on_every_request(recorder: Recorder) -> None:
    async with Client(recorder.base, token="s3cret-1") as c:
        await c.register("web", "a", port=80, address="10.0.0.1")
        await c.heartbeat("web", "a")
        await c.services()
        async for event in c.watch():
            assert event.kind == "registered"
            break
        await c.deregister("web", "a")
    assert [auth for _, _, auth in recorder.seen] == ["Bearer s3cret-1"] * 5
    assert [m for m, _, _ in recorder.seen] == ["PUT", "PUT", "GET", "GET", "DELETE"]


async def test_python_client_token_defaults_to_dnsreg_token(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DNSREG_TOKEN", "from-env")
    async with Client(recorder.base) as c:
        await c.services()
    async with Client(recorder.base, token="explicit") as c:
        await c.services()
    monkeypatch.delenv("DNSREG_TOKEN")
    async with Client(recorder.base) as c:
        await c.services()
    assert [auth for _, _, auth in recorder.seen] == ["Bearer from-env", "Bearer explicit", None]


async def test_cli_sends_token_from_flag_or_environment(recorder: Recorder) -> None:
    async def cli(*args: str, **env: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dnsreg", *args, "--api", recorder.base,
            env=clean_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        return proc.returncode

    await cli("ls", "--token", "flag-token")
    await cli("ls", DNSREG_TOKEN="env-token")
    await cli("register", "web", "--port", "80", "--address", "10.0.0.1", DNSREG_TOKEN="t3")
    await cli("deregister", "web", "a", "--token", "t4", DNSREG_TOKEN="loses")
    assert [auth for _, _, auth in recorder.seen] == [
        "Bearer flag-token",
        "Bearer env-token",
        "Bearer t3",
        "Bearer t4",
    ]


async def test_dnsreg_run_over_https_with_a_client_certificate(mtls: Server, pki: Pki) -> None:
    api = f"https://127.0.0.1:{mtls.http_port}"
    tls = ["--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    # The child looks itself up through the same secured API and exits 0 if it is there.
    child = (
        "import asyncio, sys\n"
        "from dnsreg.client import Client\n"
        "async def main():\n"
        f"    async with Client({api!r}, ca={str(pki.ca)!r}, cert={str(pki.client_cert)!r},"
        f" key={str(pki.client_key)!r}) as c:\n"
        "        return len(await c.instances('job'))\n"
        "sys.exit(0 if asyncio.run(main()) == 1 else 3)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dnsreg", "run", "--name", "job", "--port", "9999",
        "--address", "10.0.0.3", "--no-wait", "--api", api, *tls, "--",
        sys.executable, "-c", child,
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"registered job/" in err
    assert len(mtls.registry.instances("job")) == 0  # deregistered when the child exited


async def test_dnsreg_registrar_over_https_with_a_client_certificate(
    mtls: Server, pki: Pki, tmp_path: Path
) -> None:
    folder = tmp_path / "services.d"
    folder.mkdir()
    (folder / "db.toml").write_text('service = "db"\naddress = "10.0.0.8"\nport = 5432\n')
    api = f"https://127.0.0.1:{mtls.http_port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dnsreg", "registrar", "--dir", str(folder), "--interval", "0.1",
        "--deregister-on-exit", "--api", api, "--ca", str(pki.ca),
        "--cert", str(pki.client_cert), "--key", str(pki.client_key),
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await async_wait_until(lambda: len(mtls.registry.instances("db")) == 1, within=15)
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert len(mtls.registry.instances("db")) == 0
