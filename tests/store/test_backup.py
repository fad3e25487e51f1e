"""``dnsreg backup`` against a running server while writes go on, restored and checked."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import aiohttp

from dnsreg.client.backup import verify
from tests.helpers import make_config, server_process, start_server


async def _backup(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dnsreg", "backup", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _restore_and_check(tmp_path: Path, backup: Path, name: str) -> int:
    """Start a fresh server on a data dir holding only the backup; return its instance count."""
    fresh = tmp_path / name
    (fresh / "data").mkdir(parents=True)
    shutil.copy(backup, fresh / "data" / "registry.sqlite3")
    server = await start_server(make_config(fresh))
    try:
        ids = set(server.registry.instances("web"))
        revision = server.registry.revision
        # One write per revision, in order: a consistent copy holds exactly the first
        # `revision` of them, no gap and nothing torn.
        assert ids == {f"w{i}" for i in range(revision)}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.http_port}/v1/services/web/instances/w0") as r,
        ):
            assert r.status == 200
            assert (await r.json())["instance"]["address"] == "10.0.0.1"
        return revision
    finally:
        await server.stop()


async def test_backup_while_writes_run_restores_a_consistent_copy(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    with server_process(tmp_path / "live") as live:
        stop = asyncio.Event()
        warmed = asyncio.Event()  # 50 writes in: the backups start
        written = 0

        async def writes() -> None:
            nonlocal written
            async with aiohttp.ClientSession() as http:
                while not stop.is_set() and written < 5000:
                    url = f"{live.base}/v1/services/web/instances/w{written}"
                    body = {"address": "10.0.0.1", "port": 80, "ttl": 0}
                    async with http.put(url, json=body) as resp:
                        assert resp.status == 201
                    written += 1
                    if written == 50:
                        warmed.set()

        writer = asyncio.create_task(writes())
        await asyncio.wait_for(warmed.wait(), 30)
        via_api = tmp_path / "via-api.sqlite3"
        code, out, err = await _backup(str(via_api), "--api", live.base)
        assert code == 0, err
        assert "integrity ok" in out
        at_api = written
        via_dir = tmp_path / "via-dir.sqlite3"
        code, out, err = await _backup(str(via_dir), "--data-dir", str(tmp_path / "live/.dnsreg"))
        assert code == 0, err
        stop.set()
        await writer
        assert written > at_api > 50  # writes did go on around the backups

    for backup, name in ((via_api, "restored-api"), (via_dir, "restored-dir")):
        instances, revision = verify(backup)
        assert instances == revision >= 50
        assert not backup.with_name(backup.name + ".partial").exists()
        assert await _restore_and_check(tmp_path, backup, name) == revision


async def test_backup_errors_are_one_line_and_leave_no_file(tmp_path: Path) -> None:
    code, _, err = await _backup(str(tmp_path / "b.sqlite3"), "--api", "http://127.0.0.1:9")
    assert code == 1
    assert err.startswith("dnsreg: cannot fetch a backup from http://127.0.0.1:9")
    assert "Traceback" not in err
    code, _, err = await _backup(str(tmp_path / "b.sqlite3"), "--data-dir", str(tmp_path))
    assert code == 1
    assert "no dnsreg database in" in err
    assert not (tmp_path / "b.sqlite3").exists()
    assert not (tmp_path / "b.sqlite3.partial").exists()


async def test_backup_needs_an_operator_token_when_tokens_are_on(tmp_path: Path) -> None:
    from tests.http.test_auth import SECRETS, TOKENS, write_acl

    acl = write_acl(tmp_path / "acl.toml", TOKENS)
    server = await start_server(make_config(tmp_path, acl_file=acl))
    api = f"http://127.0.0.1:{server.http_port}"
    target = tmp_path / "b.sqlite3"
    try:
        code, _, err = await _backup(str(target), "--api", api)
        assert code == 1
        assert "token" in err
        code, _, err = await _backup(str(target), "--api", api, "--token", SECRETS["web-writer"])
        assert code == 1
        assert "operator" in err
        assert not target.exists()
        code, out, err = await _backup(str(target), "--api", api, "--token", SECRETS["ops"])
        assert code == 0, err
        assert "integrity ok" in out
    finally:
        await server.stop()
    assert verify(target) == (0, 0)
