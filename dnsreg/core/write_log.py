"""Which instances of each service were written, by epoch: what lets caches patch.

Pure. Per-service caches derived from the registry (``dns/service_answers``,
the IXFR journal) remember the epoch they were built at and ask which ids were
written since, so one change costs the instances it touched instead of a
rebuild of a 50 000-instance service. An epoch is a counter that never goes
back, unlike revisions under the registry's unstage: a staged write that is
undone is still a write here, and a reader re-reads those ids and finds them
as they were.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Ids remembered per service: a reader more than this many writes behind on one
# service (or an eighth of its instances, if more) rebuilds what it derived instead.
# Rebuilding costs the service; patching, the writes.
TOUCH_LOG = 64


@dataclass(slots=True)
class _Log:
    floor: int  # the log is complete for epochs above this
    entries: deque[tuple[int, str]]


class WriteLog:
    def __init__(self) -> None:
        self._epoch = 0
        self._logs: dict[str, _Log] = {}

    def touch(self, service: str, instance_id: str, size: int) -> None:
        """``instance_id`` of ``service`` (now ``size`` instances) was written."""
        self._epoch += 1
        log = self._logs.get(service)
        if log is None:
            log = self._logs[service] = _Log(self._epoch - 1, deque())
        log.entries.append((self._epoch, instance_id))
        if len(log.entries) > TOUCH_LOG and len(log.entries) > size // 8:
            log.floor = log.entries.popleft()[0]

    def forget(self, service: str) -> None:
        """``service`` has no instance left: if it comes back, it starts a new log."""
        self._logs.pop(service, None)

    def epoch(self, service: str) -> int:
        """A number that moves with every write to ``service``'s instances (0: none logged)."""
        log = self._logs.get(service)
        return log.entries[-1][0] if log is not None else 0

    def since(self, service: str, epoch: int) -> set[str] | None:
        """Ids of ``service`` written since :meth:`epoch` said ``epoch``; None: not known
        (too far back, or the service went away meanwhile): derive it all again."""
        log = self._logs.get(service)
        if log is None:
            return set() if epoch == 0 else None
        if epoch < log.floor:
            return None
        out: set[str] = set()
        for at, instance_id in reversed(log.entries):
            if at <= epoch:
                break
            out.add(instance_id)
        return out
