"""Records per instance that outlive a service revision. Pure.

A change of a 50 000-instance service must not rebuild the records of the
49 999 instances it did not touch: each record is kept with the registration
object it was built from, and reused while the instance still carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from dnsreg.core.model import Instance, Registration
from dnsreg.dns.records import Record

RECORD_MEMO = 65536  # records remembered per (type, owner) of one material
# Records remembered in all sets together (~250 bytes each: ~100 MiB at most). Hostile
# names (many tags of one big service) must not multiply the per-set bound.
MEMO_TOTAL = 400_000


class RecordMemo:
    """Records per instance that outlive a revision: a change rebuilds only what it touched.

    One set per (service, type, owner, TTL, origin); an entry is reused while
    its instance still carries the same registration object (a re-registration
    makes a new one). At most ``RECORD_MEMO`` entries per set, more than one
    reply can carry, ``max_sets`` sets and ``total`` entries in all, least
    recently used sets out first.
    """

    def __init__(
        self, max_sets: int = 256, per_set: int = RECORD_MEMO, total: int = MEMO_TOTAL
    ) -> None:
        self.max_sets = max_sets
        self.per_set = per_set
        self.total = total
        self.held = 0  # entries in all sets
        self.sets: dict[tuple[object, ...], dict[str, tuple[Registration, Record]]] = {}

    def records(
        self,
        key: tuple[object, ...],
        chosen: Collection[Instance],
        make: Callable[[Instance], Record],
    ) -> list[Record]:
        sets = self.sets
        memo = sets.pop(key, None)
        if memo is None:
            memo = {}
            if len(sets) >= self.max_sets:
                self.held -= len(sets.pop(next(iter(sets))))
        # Room for every record of this call; older sets give theirs up.
        while sets and self.held + len(chosen) > self.total:
            self.held -= len(sets.pop(next(iter(sets))))
        sets[key] = memo
        out: list[Record] = []
        append = out.append
        get = memo.get
        before = len(memo)
        room = min(self.per_set - before, self.total - self.held)
        for i in chosen:
            reg = i.reg
            hit = get(reg.id)
            if hit is not None and hit[0] is reg:
                append(hit[1])
                continue
            record = make(i)
            if hit is not None or room > 0:
                memo[reg.id] = (reg, record)
                room -= hit is None
            append(record)
        self.held += len(memo) - before
        return out
