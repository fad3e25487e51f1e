"""The file-driven registrar against a real server: adds, edits, deletes, broken files, death."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dnsreg.app import Server
from dnsreg.client.client import Client
from dnsreg.client.registrar import Registrar
from tests.helpers import async_wait_until, make_config, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(make_config(tmp_path))
    yield srv
    await srv.stop()


@pytest.fixture
async def registrar(server: Server, tmp_path: Path) -> AsyncIterator[Registrar]:
    folder = tmp_path / "services.d"
    folder.mkdir()
    async with Client(f"http://127.0.0.1:{server.http_port}") as c:
        reg = Registrar(c, folder, interval=0.05, hostname="registrar-host")
        stop = asyncio.Event()
        task = asyncio.create_task(reg.run(stop))
        await async_wait_until(lambda: reg.scans > 0)
        yield reg
        stop.set()
        await task


def served(server: Server, service: str) -> dict[str, int]:
    """id -> port of what the server holds for ``service``."""
    return {i: inst.reg.port for i, inst in server.registry.instances(service).items()}


def write(path: Path, text: str) -> None:
    # Write then rename, as editors and config tools do: never a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)


WEB = """
[[instance]]
service = "web"
id = "web-1"
address = "10.0.0.5"
port = {port}
ttl = "{ttl}"

[[instance]]
service = "web"
id = "web-2"
address = "10.0.0.6"
port = 8080
"""


async def test_follows_adds_edits_and_deletes(server: Server, registrar: Registrar) -> None:
    folder = registrar.directory
    write(folder / "web.toml", WEB.format(port=8080, ttl="1s"))
    await async_wait_until(lambda: served(server, "web") == {"web-1": 8080, "web-2": 8080})
    # The registrar keeps the 1 s lease alive.
    await asyncio.sleep(2.0)
    assert served(server, "web") == {"web-1": 8080, "web-2": 8080}

    write(folder / "web.toml", WEB.format(port=9090, ttl="1s"))  # edit: replaced in place
    await async_wait_until(lambda: served(server, "web") == {"web-1": 9090, "web-2": 8080})

    write(folder / "db.toml", 'service = "db"\naddress = "10.0.0.7"\nport = 5432\n')
    await async_wait_until(lambda: served(server, "db") == {"10-0-0-7-5432": 5432})

    (folder / "web.toml").unlink()  # delete: deregistered, the other file untouched
    await async_wait_until(lambda: served(server, "web") == {})
    assert served(server, "db") == {"10-0-0-7-5432": 5432}
    # Non-TOML files are none of its business.
    (folder / "notes.txt").write_text("service = nonsense")
    scans = registrar.scans
    await async_wait_until(lambda: registrar.scans > scans + 2)
    assert registrar.errors == {}


async def test_broken_file_is_reported_by_name_and_others_go_on(
    server: Server, registrar: Registrar
) -> None:
    folder = registrar.directory
    write(folder / "db.toml", 'service = "db"\naddress = "10.0.0.7"\nport = 5432\n')
    write(folder / "bad.toml", 'service = "bad"\nport = \n')
    await async_wait_until(lambda: "bad.toml" in registrar.errors and served(server, "db") != {})
    assert registrar.errors["bad.toml"].startswith("bad.toml: not valid TOML")
    assert served(server, "bad") == {}

    # A good file that goes bad keeps what it had: a typo must not take a service down.
    write(folder / "db.toml", 'service = "db"\naddress = "10.0.0.7"\nport = "oops"\n')
    await async_wait_until(lambda: "db.toml" in registrar.errors)
    assert "keeping its previous content" in registrar.errors["db.toml"]
    assert served(server, "db") == {"10-0-0-7-5432": 5432}

    # Fixed: picked up, error cleared.
    write(folder / "bad.toml", 'service = "bad"\naddress = "10.0.0.9"\nport = 81\n')
    await async_wait_until(lambda: served(server, "bad") == {"10-0-0-9-81": 81})
    assert "bad.toml" not in registrar.errors


async def test_refusals_and_duplicates_are_reported(server: Server, registrar: Registrar) -> None:
    folder = registrar.directory
    # The server refuses this one (the id equals a tag): reported under the file's name.
    write(
        folder / "a.toml",
        'service = "web"\nid = "x"\ntags = ["x"]\naddress = "10.0.0.1"\nport = 1\n',
    )
    write(folder / "b.toml", 'service = "db"\nid = "d"\naddress = "10.0.0.2"\nport = 2\n')
    write(folder / "c.toml", 'service = "db"\nid = "d"\naddress = "10.0.0.3"\nport = 3\n')
    await async_wait_until(
        lambda: {"a.toml", "c.toml"} <= set(registrar.errors) and served(server, "db") != {}
    )
    assert "a.toml" in registrar.errors["a.toml"]
    assert "already described in b.toml" in registrar.errors["c.toml"]
    assert served(server, "db") == {"d": 2}
    assert served(server, "web") == {}


async def test_when_the_registrar_dies_its_leases_run_out(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "services.d"
    folder.mkdir()
    write(folder / "web.toml", WEB.format(port=8080, ttl="1s"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dnsreg", "registrar", "--dir", str(folder),
        "--api", f"http://127.0.0.1:{server.http_port}", "--interval", "0.1",
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        await async_wait_until(lambda: set(served(server, "web")) == {"web-1", "web-2"}, 15)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        # web-1 has a 1 s lease: gone within a second or two; web-2 (30 s) still there.
        await async_wait_until(lambda: set(served(server, "web")) == {"web-2"}, 3)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert "registered web/web-1" in log


async def test_clean_stop_can_deregister(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "services.d"
    folder.mkdir()
    write(folder / "web.toml", WEB.format(port=8080, ttl="30s"))
    async with Client(f"http://127.0.0.1:{server.http_port}") as c:
        reg = Registrar(c, folder, interval=0.05, deregister_on_exit=True)
        stop = asyncio.Event()
        task = asyncio.create_task(reg.run(stop))
        await async_wait_until(lambda: len(served(server, "web")) == 2)
        stop.set()
        await task
    assert served(server, "web") == {}
