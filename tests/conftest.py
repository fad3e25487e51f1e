"""Fixtures for every test folder: a fake clock, an in-process server, server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import FakeClock, Process, Running, make_config, spawn_server, start_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path))
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    procs: list[Process] = []

    def _spawn(*args: str, workdir: Path | None = None) -> Process:
        wd = workdir or tmp_path
        (wd / "zones").mkdir(exist_ok=True)
        p = spawn_server(wd, *args)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
        p.proc.wait(timeout=10)
