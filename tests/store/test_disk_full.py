"""Disk full for real: a small tmpfs under the data directory (needs root to mount).

A write the disk cannot take changes nothing (no event, no revision, no DNS
answer), the client hears "disk full", /v1/status says degraded, and once
space is freed the server recovers by itself, without a restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import dns.rcode
import pytest

from dnsreg.core.registry import Change
from dnsreg.store.sqlite import RECOVERY_PROBE
from tests.helpers import Running, async_wait_until, make_config, start_server


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk says ENOSPC; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 1):  # down to the last byte: no page fits after
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        with pytest.raises(OSError, match="No space left") as full:
            os.write(fd, b"\0")
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


async def test_disk_full_changes_nothing_then_recovers_without_restart(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        server = await start_server(make_config(tmp_path, data_dir=disk / "data"))
        http = aiohttp.ClientSession()
        running = Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
        try:
            await running.register("web", "web-1", address="10.0.0.1", port=80)
            assert server.store is not None
            seen: list[Change] = []
            server.store.subscribe(seen.append)
            revision = server.registry.revision
            filler = fill(disk)

            for i in range(2, 6):  # several writes, so no single lucky page saves one
                url = f"{running.base}/v1/services/web/instances/web-{i}"
                body = {
                    "address": f"10.0.0.{i}",
                    "port": 80,
                    "meta": {f"k{j}": "x" * 200 for j in range(10)},
                }
                async with http.put(url, json=body) as resp:
                    assert resp.status == 503
                    assert (await resp.json())["error"] == "the store could not commit: disk full"
            async with http.delete(f"{running.base}/v1/services/web/instances/web-1") as resp:
                assert resp.status == 503
            assert seen == []
            assert server.registry.revision == revision
            reply = await running.query("web.service.local", "A")
            assert reply.rcode() == dns.rcode.NOERROR
            assert {r.to_text() for rrset in reply.answer for r in rrset} == {"10.0.0.1"}
            async with http.get(f"{running.base}/v1/status") as resp:
                status = await resp.json()
            assert status["status"] == "degraded"
            assert status["reason"].startswith("disk full")
            assert status["revision"] == revision

            filler.unlink()
            # Recovers by itself (the writer probes with a commit of its own) ...
            await async_wait_until(lambda: server.store.degraded is None, RECOVERY_PROBE + 5)
            async with http.get(f"{running.base}/v1/status") as resp:
                assert (await resp.json())["status"] == "ok"
            # ... and the next write is the next revision, announced once.
            body = await running.register("web", "web-2", address="10.0.0.2", port=80)
            assert body["revision"] == revision + 1
            assert [c.revision for c in seen] == [revision + 1]
        finally:
            await http.close()
            await server.stop()
        # What was acknowledged survives a restart; what was refused never existed.
        again = await start_server(make_config(tmp_path, data_dir=disk / "data"))
        try:
            assert set(again.registry.instances("web")) == {"web-1", "web-2"}
            assert again.registry.revision == revision + 1
        finally:
            await again.stop()
