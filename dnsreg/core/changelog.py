"""Recent registry history, for event streams and blocking queries.

Pure: no asyncio, no clock. :class:`ChangeLog` is a bounded ring of encoded
changes. It answers the two questions change notification asks:

- "what happened after revision N (under this prefix)?" (``/v1/events?since=N``),
- "did anything relevant happen after revision N?" (``GET ...?index=N``).

It only answers what it knows: every change after ``floor`` up to ``head`` is in
the ring. A cursor older than ``floor`` (evicted, or from before this process
started) or newer than ``head`` (from a server that lost its state) cannot be
served incrementally: the stream sends a ``reset`` and the client re-lists.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any

from dnsreg.core.durations import parse_duration
from dnsreg.core.errors import InvalidInput
from dnsreg.core.registry import Change

DEFAULT_CAPACITY = 10_000
MAX_WAIT = 600.0  # SPEC §5: a blocking query holds at most 10 minutes
DEFAULT_WAIT = 300.0
JITTER_FRACTION = 1 / 16  # as Consul: spreads a fleet's returns over the last 1/16 of the wait


class Event:
    """One change, encoded at most once, and only if some stream carries it.

    Most changes are never streamed (no watcher of that prefix); encoding every
    one eagerly cost more than the rest of a registration's bookkeeping.
    """

    __slots__ = ("change", "encoded", "id", "kind", "revision", "service")

    def __init__(self, change: Change) -> None:
        self.change = change
        self.revision = change.revision
        self.kind = change.kind.value
        self.service = change.service
        self.id = change.id
        # The stream's encoding, filled by the first stream that carries this change
        # (dnsreg.http.events.event_frame) and shared by every other one.
        self.encoded: bytes | None = None


def event_data(change: Change) -> dict[str, Any]:
    """The JSON payload of an event: the new state, or null when the instance left."""
    return {
        "revision": change.revision,
        "kind": change.kind.value,
        "service": change.service,
        "id": change.id,
        "instance": change.after.to_json() if change.after is not None else None,
    }


def encode_change(change: Change) -> Event:
    return Event(change)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events after a cursor; ``reset`` when the log could not tell."""

    events: list[Event]
    cursor: int  # where the reader stands after this batch (the log's head)
    reset: bool = False


class ChangeLog:
    """A bounded ring of the most recent changes, in revision order."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, floor: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.floor = floor  # every change with revision > floor is remembered
        self.head = floor  # the newest revision seen
        # A list with a moving start (compacted now and then) keeps bisect O(log n).
        self._events: list[Event] = []
        self._revisions: list[int] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._events) - self._start

    def append(self, event: Event) -> bool:
        """Remember ``event``; False (and ignored) when it is not newer than the head.

        One exception: another instance's change at the head's own revision. A
        shared store that re-lists after losing its watch history applies the
        whole difference at the one etcd revision it listed at.
        """
        last = self._events[-1] if len(self) else None
        same_step = (
            last is not None
            and last.revision == event.revision
            and (last.service, last.id) != (event.service, event.id)
        )
        if event.revision <= self.head and not same_step:
            return False
        self._events.append(event)
        self._revisions.append(event.revision)
        self.head = event.revision
        if len(self) > self.capacity:
            self.floor = self._revisions[self._start]
            self._start += 1
            if self._start >= self.capacity:
                del self._events[: self._start]
                del self._revisions[: self._start]
                self._start = 0
        return True

    def covers(self, cursor: int) -> bool:
        """True when every change after ``cursor`` is known here."""
        return self.floor <= cursor <= self.head

    def after(self, cursor: int, prefix: str = "") -> Batch:
        """Events newer than ``cursor`` whose service starts with ``prefix``."""
        if not self.covers(cursor):
            return Batch([], self.head, reset=True)
        i = bisect.bisect_right(self._revisions, cursor, lo=self._start)
        events = self._events[i:]
        if prefix:
            events = [e for e in events if e.service.startswith(prefix)]
        return Batch(events, self.head)

    def moved_since(self, index: int, *, service: str | None = None, prefix: str = "") -> bool:
        """Did anything a reader of ``service`` (or of ``prefix``) sees change after ``index``?

        True also when the log cannot tell: answering at once is always safe for a
        blocking query, holding it on a stale index is not.
        """
        if not self.covers(index):
            return True
        i = bisect.bisect_right(self._revisions, index, lo=self._start)
        for event in reversed(self._events[i:]):
            if service is not None:
                if event.service == service:
                    return True
            elif event.service.startswith(prefix):
                return True
        return False


def parse_index(text: str) -> int:
    if not text.isdigit():
        raise InvalidInput(f"index: {text!r} is not a non-negative integer", field="index")
    return int(text)


def parse_wait(text: str | None) -> float:
    """The ``wait`` of a blocking query, capped at :data:`MAX_WAIT`."""
    if text is None or text == "":
        return DEFAULT_WAIT
    return min(parse_duration(text, field="wait"), MAX_WAIT)


def blocking_timeout(wait: float, rng: random.Random) -> float:
    """``wait`` plus up to 1/16 of it at random, never above :data:`MAX_WAIT`.

    Without jitter, a fleet of watchers that started together returns together on
    every idle timeout. Near the cap the jitter is taken off instead of added.
    """
    wait = min(max(wait, 0.0), MAX_WAIT)
    jitter = rng.uniform(0.0, wait * JITTER_FRACTION)
    return wait + jitter if wait + jitter <= MAX_WAIT else wait - jitter
