"""One server per data directory: an exclusive ``flock`` held for the process's life.

Two servers on one data directory would each serve only their own writes and
hand out colliding revisions (breaking ``index``/``since`` resumption), so the
second one must not start. ``flock`` (not a PID file alone) because the kernel
drops the lock when the process dies, however it dies: a stale lock file left
by a crash never blocks a restart. The PID written into the file is only for
the message that names who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from dnsreg.core.errors import DataDirLocked

LOCK_NAME = "dnsreg.lock"


class DataDirLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process's end)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"dnsreg PID {holder}" if holder else "another dnsreg process"
            where = self.data_dir.absolute()
            raise DataDirLocked(
                f"data directory {where} is in use by {who} (lock {self.path.name}); "
                "one server per data directory: stop it, or give this one another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Emptied first: a PID left behind would name a process that no longer holds it.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock


def lock_holder(data_dir: Path) -> int | None:
    """The PID of the server holding ``data_dir``, or None when nobody holds it."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
