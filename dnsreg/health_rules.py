"""Health decisions, as pure functions of their inputs and ``now``.

* :func:`apply_result`: one probe result moves a check's state, with the
  HAProxy-style ``rise``/``fall`` thresholds (consecutive results).
* :func:`deregister_at`: when ``deregister_after`` removes an instance.
* :func:`spread_offset` / :func:`first_run` / :func:`next_run`: when a check
  runs, on a fixed per-check grid so a restart does not probe everything at once.
* :class:`ExpiryGuard`: self-preservation (SPEC §3), the rule that pauses
  lease expiry when far more leases lapse than normal churn explains.

No asyncio, no sockets, no clock: the checker (``dnsreg.health``) and the
store do the I/O and pass the time in.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dnsreg.model import Check, CheckStatus, Health

#: Longest check output kept (characters): enough for an error or the head of a
#: health page, small enough that 10 000 instances do not hold megabytes of it.
MAX_OUTPUT = 512


# --------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one run of a check found."""

    health: Health
    output: str
    started: float  # wall-clock seconds, when the probe started
    duration: float  # seconds


def truncate(text: str, limit: int = MAX_OUTPUT) -> str:
    """Cut ``text`` to ``limit`` characters, saying that it was cut."""
    text = text.strip()
    if len(text) <= limit:
        return text
    marker = " …(truncated)"
    return text[: limit - len(marker)] + marker


def http_verdict(status: int) -> Health:
    """SPEC §4: 2xx is passing, 429 (Too Many Requests, RFC 6585 §4) warning, else critical.

    429 means "alive but shedding load": taking it out of DNS would move its
    load onto the others and spread the overload, so it stays served.
    """
    if 200 <= status < 300:
        return Health.PASSING
    if status == 429:
        return Health.WARNING
    return Health.CRITICAL


def apply_result(check: Check, status: CheckStatus, result: ProbeResult) -> CheckStatus:
    """The check's status after ``result``.

    A result is *ok* (passing or warning: still served) or *failing*
    (critical). ``consecutive`` counts results in a row on the same side as
    this one. A served check turns critical after ``fall`` failing results in
    a row; a critical check (including the initial "not run yet") turns
    passing/warning after ``rise`` ok results in a row. Between passing and
    warning there is no threshold: both are served, so nothing DNS shows moves.
    """
    ok = result.health.served
    previous = status.last_result
    streak = status.consecutive + 1 if previous is not None and previous.served is ok else 1
    state = status.state
    if ok:
        if state.served or streak >= check.rise:
            state = result.health
    elif state.served and streak >= check.fall:
        state = Health.CRITICAL
    if state is not Health.CRITICAL:
        critical_since = None
    elif status.state is Health.CRITICAL and status.critical_since is not None:
        critical_since = status.critical_since
    else:
        # Turned critical now, or leaves "not run yet" as critical: the clock
        # for deregister_after starts with the first result that says so.
        critical_since = result.started
    return CheckStatus(
        state=state,
        output=truncate(result.output),
        consecutive=streak,
        last_run=result.started,
        last_duration=result.duration,
        critical_since=critical_since,
        last_result=result.health,
    )


def deregister_at(check: Check, status: CheckStatus) -> float | None:
    """Wall-clock time at which ``deregister_after`` removes the instance, or None."""
    if check.deregister_after is None or status.state is not Health.CRITICAL:
        return None
    if status.critical_since is None:
        return None  # "not run yet" is no evidence of anything
    return status.critical_since + check.deregister_after


# ------------------------------------------------------------------ scheduling
#: Phases are whole multiples of this (or of a tenth of a shorter interval).
SCHEDULE_TICK = 0.02


def spread_offset(key: str, interval: float) -> float:
    """A fixed phase in [0, interval) for the check named ``key``.

    Derived from a hash, so it is the same after a restart and the phases of
    many checks are spread evenly over the interval: no thundering herd.
    Phases fall on a 20 ms tick so that checks due together wake the event
    loop once: at 1 000 checks a second, a wakeup per check cost more CPU
    than the checks' own bookkeeping. Every run still follows the previous
    one by exactly the interval, so detection time does not change.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    tick = min(SCHEDULE_TICK, interval / 10)
    slots = max(1, int(interval / tick))
    return (int.from_bytes(digest, "big") * slots >> 64) * tick


def next_run(now: float, interval: float, offset: float) -> float:
    """The first time strictly after ``now`` on the grid ``offset + k * interval``.

    A run that started on the grid and took less than the interval (the
    timeout is at most the interval) is followed exactly one interval later,
    so a target that starts failing is probed within one interval.
    """
    k = math.floor((now - offset) / interval) + 1
    at = offset + k * interval
    if at <= now:  # float rounding right on a grid point
        at += interval
    return at


def following_run(scheduled: float, now: float, interval: float, offset: float) -> float:
    """When to run after the run that was due at ``scheduled`` and ended at ``now``.

    Counted from the later of the two: an event loop's clock may be cached
    and read a hair before the timer it just fired (uvloop's is, to the
    millisecond), and "the grid point after now" would then be the same run
    again. A run that overran its slot skips to the next grid point.
    """
    return next_run(max(scheduled, now), interval, offset)


def first_run(now: float, interval: float, offset: float, *, fresh: bool) -> float:
    """When a check runs first: at once for a new (or never checked) instance
    (SPEC §4: the first check runs at registration), else at its grid point
    (after a restart, checks resume spread over their interval)."""
    return now if fresh else next_run(now, interval, offset)


# ----------------------------------------------------------- self-preservation
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
