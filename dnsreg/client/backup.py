"""``dnsreg backup FILE``: a consistent copy of a server's SQLite store.

Two ways to it, both giving one self-contained SQLite file:

* ``--api URL`` (default): ``GET /v1/backup`` from the running server
  (operator right), streamed into ``FILE``;
* ``--data-dir DIR``: straight from the data directory, with SQLite's online
  backup API, whether a server runs on it or not (SQLite's own locking makes the
  copy one consistent revision, WAL included; a ``cp`` of a live WAL database is
  not consistent).

Either way the copy is written to ``FILE.partial``, checked (``PRAGMA
integrity_check`` and dnsreg's tables), then renamed over ``FILE``: a failed
backup never leaves a half file under the name a restore would pick up.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from dnsreg.client.client import Client, _api_error, _json_or_text
from dnsreg.core.errors import InvalidInput, ServerError, Unreachable

DB_NAME = "registry.sqlite3"  # what the server keeps in its data directory


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    instances: int
    revision: int
    size: int


async def backup_from_api(client: Client, target: Path, *, limit: float = 300.0) -> Snapshot:
    """Through ``client``'s session: its TLS settings and its token (the operator's)."""
    partial = _partial(target)
    api = client.api
    try:
        async with client.session.get(
            api + "/v1/backup",
            headers=client._headers,  # same package: the token the client sends everywhere
            timeout=aiohttp.ClientTimeout(total=limit),
        ) as resp:
            if resp.status >= 400:
                raise _api_error(resp.status, await _json_or_text(resp))
            with partial.open("wb") as out:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename:
            raise InvalidInput(f"cannot write {exc.filename}: {exc.strerror}") from None
        raise Unreachable(f"cannot fetch a backup from {api}: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return _finish(partial, target)


def backup_from_data_dir(data_dir: Path, target: Path) -> Snapshot:
    source_path = data_dir / DB_NAME
    if not source_path.is_file():
        raise InvalidInput(f"no dnsreg database in {data_dir} (looked for {source_path})")
    partial = _partial(target)
    try:
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
        try:
            destination = sqlite3.connect(partial)
            try:
                source.backup(destination)
                destination.execute("PRAGMA journal_mode=DELETE")
            finally:
                destination.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise ServerError(f"cannot back up {source_path}: {exc}") from None
    return _finish(partial, target)


def verify(path: Path) -> tuple[int, int]:
    """(instances, revision) of a dnsreg backup; raises if it is not a sound one."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (check,) = db.execute("PRAGMA integrity_check").fetchone()
            if check != "ok":
                raise ServerError(f"{path} failed SQLite's integrity check: {check}")
            (instances,) = db.execute("SELECT count(*) FROM instances").fetchone()
            row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
    except sqlite3.Error as exc:
        raise ServerError(f"{path} is not a dnsreg backup: {exc}") from None
    return int(instances), int(row[0]) if row else 0


def _partial(target: Path) -> Path:
    if target.is_dir():
        raise InvalidInput(f"{target} is a directory: name the backup file")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    return partial


def _finish(partial: Path, target: Path) -> Snapshot:
    try:
        instances, revision = verify(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    size = partial.stat().st_size
    partial.replace(target)
    return Snapshot(target, instances, revision, size)
