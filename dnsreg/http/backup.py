"""``GET /v1/backup``: a consistent snapshot of the store, streamed to the operator.

Why a streaming GET rather than a POST that writes a file on the server: the
operator runs ``dnsreg backup FILE`` wherever they are, and the file should land
there (a backup kept on the server's own disk dies with that disk); the server
never writes a path a caller named (no path traversal, no clobbering); and
``curl -o`` works as well as the CLI. The snapshot is taken into a temporary
file beside the database (the store's online backup, one read transaction), then
streamed in chunks without holding the event loop, and deleted.

Operator-only: every request goes through :meth:`BackupRoute._authorize`, which the
composition root wires to the one authorisation function (``Auth.authorize`` with
``Right.OPERATOR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from dnsreg.store import Store

log = logging.getLogger("dnsreg.http")

CHUNK = 256 * 1024
SQLITE_MEDIA_TYPE = "application/vnd.sqlite3"


class BackupRoute:
    def __init__(
        self,
        store: Store,
        *,
        scratch: Path,
        authorize: Callable[[web.Request], object],
    ) -> None:
        self.store = store
        self.scratch = scratch  # where the snapshot is made before it is streamed
        self.authorize = authorize

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/backup", self.get, allow_head=False)

    def _authorize(self, request: web.Request) -> None:
        self.authorize(request)

    async def get(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        path = await asyncio.to_thread(self._scratch_path)
        try:
            revision = self.store.registry.revision  # at least this; the file says exactly
            await self.store.backup(path)
            snapshot = await asyncio.to_thread(path.open, "rb")
            with snapshot:
                size = os.fstat(snapshot.fileno()).st_size
                response = web.StreamResponse(
                    headers={
                        "Content-Type": SQLITE_MEDIA_TYPE,
                        "Content-Length": str(size),
                        "Content-Disposition": 'attachment; filename="dnsreg-backup.sqlite3"',
                        "X-Dnsreg-Index": str(revision),
                    }
                )
                await response.prepare(request)
                while chunk := await asyncio.to_thread(snapshot.read, CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            log.info("backup: %d bytes sent to %s", size, request.remote)
            return response
        finally:
            await asyncio.to_thread(_remove, path)

    def _scratch_path(self) -> Path:
        """A fresh name beside the database (the backup creates the file itself)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".backup-", suffix=".sqlite3", dir=self.scratch)
        os.close(fd)
        os.unlink(name)
        return Path(name)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
