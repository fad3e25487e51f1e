"""The data directory as a user meets it: one server per directory, and a clear refusal
of a database file that is damaged or not dnsreg's."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dnsreg.core.errors import DataDirLocked
from dnsreg.store.datadir_lock import LOCK_NAME, lock_holder
from tests.helpers import make_config, server_process, start_server


def _serve(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (workdir / "zones").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "dnsreg", "serve", "--dns", "127.0.0.1:0", "--http",
         "127.0.0.1:0", *args],
        cwd=workdir, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_a_second_server_on_the_same_data_dir_exits_1_naming_dir_and_pid(
    tmp_path: Path,
) -> None:
    with server_process(tmp_path) as first:
        data = tmp_path / ".dnsreg"
        assert lock_holder(data) == first.proc.pid
        assert (data / LOCK_NAME).read_text().strip() == str(first.proc.pid)
        second = _serve(tmp_path)
        assert second.returncode == 1
        assert f"data directory {data} is in use" in second.stderr
        assert f"PID {first.proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        # The first one is unharmed and still the only holder.
        assert first.proc.poll() is None
        assert lock_holder(data) == first.proc.pid
    # Released with the process: the directory is free again.
    assert lock_holder(tmp_path / ".dnsreg") is None


async def test_in_process_servers_share_the_rule(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = await start_server(config)
    try:
        with pytest.raises(DataDirLocked, match="in use by dnsreg PID"):
            await start_server(config)
        assert first.store is not None  # the refused one touched nothing of the first
    finally:
        await first.stop()
    again = await start_server(config)  # stop() let go of the lock
    await again.stop()


def _assert_refused(result: subprocess.CompletedProcess[str], db: Path, what: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert str(db) in errors[0]
    assert what in errors[0]
    assert "Restore a backup" in errors[0]
    assert "move the file aside" in errors[0]


def test_a_file_that_is_not_a_database_is_refused_with_exit_2(tmp_path: Path) -> None:
    data = tmp_path / ".dnsreg"
    data.mkdir()
    db = data / "registry.sqlite3"
    db.write_bytes(b"this is not SQLite at all, just some text\n" * 200)
    _assert_refused(_serve(tmp_path), db, "damaged or not a database")
    assert db.read_bytes().startswith(b"this is not SQLite")  # left as it was


def test_a_damaged_database_is_refused_with_exit_2(tmp_path: Path) -> None:
    data = tmp_path / ".dnsreg"
    data.mkdir()
    db = data / "registry.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE instances (service TEXT, id TEXT, data TEXT)")
        conn.executemany(
            "INSERT INTO instances VALUES (?, ?, ?)",
            [("web", f"w{i}", "x" * 500) for i in range(200)],
        )
    raw = bytearray(db.read_bytes())
    raw[4096 : 4096 * 3] = b"\xff" * (4096 * 2)  # scribble over b-tree pages
    db.write_bytes(bytes(raw))
    _assert_refused(_serve(tmp_path), db, "cannot be used")


def test_a_foreign_sqlite_database_is_refused_with_exit_2(tmp_path: Path) -> None:
    data = tmp_path / ".dnsreg"
    data.mkdir()
    db = data / "registry.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    _assert_refused(_serve(tmp_path), db, "not dnsreg's database (it holds moz_places)")
    with sqlite3.connect(db) as conn:  # nothing of ours was added to it
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"moz_places"}


def test_a_row_that_cannot_be_read_is_refused_with_exit_2(tmp_path: Path) -> None:
    data = tmp_path / ".dnsreg"
    data.mkdir()
    db = data / "registry.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE instances (service TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,"
            " PRIMARY KEY (service, id)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO instances VALUES ('web', 'w1', '{not json')")
    _assert_refused(_serve(tmp_path), db, "a row cannot be read")
