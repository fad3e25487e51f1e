"""Self-preservation (SPEC §3): the rule that pauses lease expiry when far more
leases lapse than normal churn explains. Pure: ``now`` and the leases are passed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: A lease that has gone more than this share of its TTL without a heartbeat has
#: missed at least one: clients heartbeat every TTL/3 (the dnsreg client does).
LATE_SHARE = 0.5
#: Fewer lapsing leases than this never pause expiry, whatever their share: one
#: instance of one, or a few in a small registry, is churn, not a partition.
GUARD_MIN_LAPSING = 10
DEFAULT_EXPIRY_GUARD = 0.5


def is_lapsing(deadline: float, ttl: float, now: float) -> bool:
    """Overdue, or more than half the lease gone without a heartbeat."""
    return deadline - now < ttl * (1.0 - LATE_SHARE)


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    hold: bool
    lapsing: int
    leases: int

    @property
    def share(self) -> float:
        return self.lapsing / self.leases if self.leases else 0.0


def guard_verdict(
    lapsing: int, leases: int, fraction: float | None, minimum: int = GUARD_MIN_LAPSING
) -> GuardVerdict:
    """Hold expiry when strictly more than ``fraction`` of the leases lapse and at
    least ``minimum`` do. ``fraction`` None: the guard is off."""
    hold = (
        fraction is not None and leases > 0 and lapsing >= minimum and lapsing > fraction * leases
    )
    return GuardVerdict(hold, lapsing, leases)


class ExpiryGuard:
    """Self-preservation (SPEC §3), as Eureka does it: when far more leases lapse
    within one lease period than normal churn explains, the likelier story is
    that the registry lost its network, not that the instances died, so lease
    expiry pauses instead of emptying DNS.

    The rule, evaluated whenever a lease is due and every second while holding:

    * only leases renewed at least once count (SPEC §7; the store passes just
      those in and reports just their expiries): registrations that never
      renew, a stream of throw-aways above all, cannot trip the guard, and
      they expire as usual even while it holds;
    * *leases* = leased instances present + leases expired within the last
      lease period (their own TTL);
    * *lapsing* = present leases that are overdue or have gone more than half
      their TTL without a heartbeat + the same recently expired leases;
    * expiry pauses while lapsing > ``fraction`` × leases **and** lapsing ≥
      ``minimum``; it resumes by itself once heartbeats return (a renewed lease
      stops lapsing) or new registrations dilute the share.

    Counting recent expiries keeps a cascade honest: expiring a lease does not
    make the lapsing share look smaller. Pure: the store passes ``now`` and the
    leases in; this object remembers only recent expiries and its own state.
    """

    def __init__(self, fraction: float | None, minimum: int = GUARD_MIN_LAPSING) -> None:
        self.fraction = fraction
        self.minimum = minimum
        self.active = False
        self.since: float | None = None
        self.last: GuardVerdict | None = None
        self.assessed_at: float | None = None
        self._recent: list[float] = []  # min-heap: when each recent expiry stops counting

    @property
    def enabled(self) -> bool:
        return self.fraction is not None

    def expired(self, now: float, ttl: float) -> None:
        """A lease of ``ttl`` seconds expired at ``now``; it counts for one lease period."""
        heapq.heappush(self._recent, now + ttl)

    def recent(self, now: float) -> int:
        while self._recent and self._recent[0] <= now:
            heapq.heappop(self._recent)
        return len(self._recent)

    def assess(self, now: float, leases: Iterable[tuple[float, float]]) -> GuardVerdict:
        """Verdict for the current leases, given as (deadline, ttl); updates ``active``."""
        present = lapsing = 0
        for deadline, ttl in leases:
            present += 1
            if is_lapsing(deadline, ttl, now):
                lapsing += 1
        return self.judge(now, present, lapsing)

    def judge(self, now: float, present: int, lapsing: int) -> GuardVerdict:
        """Verdict for ``present`` leases of which ``lapsing`` lapse (counted by the
        caller, e.g. in slices that yield the event loop); updates ``active``."""
        recent = self.recent(now)
        verdict = guard_verdict(lapsing + recent, present + recent, self.fraction, self.minimum)
        if verdict.hold and not self.active:
            self.since = now
        elif not verdict.hold:
            self.since = None
        self.active = verdict.hold
        self.last = verdict
        self.assessed_at = now
        return verdict

    def describe(self) -> dict[str, Any]:
        last = self.last
        return {
            "enabled": self.enabled,
            "threshold": self.fraction,
            "minimum": self.minimum,
            "active": self.active,
            "since": self.since,
            "lapsing": last.lapsing if last else 0,
            "leases": last.leases if last else 0,
            "assessed_at": self.assessed_at,
        }
