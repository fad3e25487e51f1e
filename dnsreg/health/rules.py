"""Health decisions, as pure functions of their inputs and ``now``.

* :func:`apply_result`: one probe result moves a check's state, with the
  HAProxy-style ``rise``/``fall`` thresholds (consecutive results).
* :func:`deregister_at`: when ``deregister_after`` removes an instance.
* :func:`ttl_report` / :func:`ttl_expires_at` / :func:`ttl_expire`: TTL checks,
  whose state the service reports and which turn critical when it stops.
* :func:`spread_offset` / :func:`first_run` / :func:`next_run`: when a check
  runs, on a fixed per-check grid so a restart does not probe everything at once.

No asyncio, no sockets, no clock: the checker (``dnsreg.health.checker``) does
the I/O and passes the time in. Self-preservation, a rule of the registry's
leases rather than of health, is :mod:`dnsreg.core.preservation`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from dnsreg.core.model import Check, CheckStatus, Health

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


# ------------------------------------------------------------------ TTL checks
def ttl_report(
    check: Check, status: CheckStatus, health: Health, output: str, now: float
) -> CheckStatus:
    """A TTL check's status after the service reported ``health`` at ``now``.

    A report is a result like a probe's, so ``rise``/``fall`` (Consul's
    ``SuccessBeforePassing``/``FailuresBeforeCritical``) count reports the same
    way; the TTL starts again from ``now`` (``last_run``).
    """
    return apply_result(check, status, ProbeResult(health, output, now, 0.0))


def ttl_expires_at(
    check: Check, status: CheckStatus, registered_at: float, watched_since: float | None = None
) -> float | None:
    """When the TTL check turns critical for want of a report, or None if nothing is due.

    Counted from the last report, or from the registration when none came yet
    (Consul starts a TTL check critical; with ``deregister_after`` the clock
    must still start, or a service that never reports would never be removed),
    and never from before ``watched_since``, when this server began to watch the
    check: while it was down (or another node watched) reports could not count,
    so after a restart every service gets one full TTL to report again.
    Nothing is due once the latest finding is already critical.
    """
    if check.kind != "ttl" or status.last_result is Health.CRITICAL:
        return None
    since = status.last_run if status.last_run is not None else registered_at
    if watched_since is not None:
        since = max(since, watched_since)
    return since + check.interval


def ttl_expire(check: Check, status: CheckStatus, now: float) -> CheckStatus:
    """The status of a TTL check whose TTL ran out at ``now``: critical at once.

    The service failed to say anything, which is not a probe result to count
    against ``fall``: Consul marks the check critical on the spot, and so do we.
    """
    ran_out = f"TTL expired: no update for {_seconds(check.interval)}"
    critical_since = (
        status.critical_since
        if status.state is Health.CRITICAL and status.critical_since is not None
        else now
    )
    output = f"{ran_out} (last: {status.output})" if status.last_run is not None else ran_out
    return CheckStatus(
        state=Health.CRITICAL,
        output=truncate(output),
        consecutive=1,
        last_run=now,
        last_duration=0.0,
        critical_since=critical_since,
        last_result=Health.CRITICAL,
    )


def _seconds(value: float) -> str:
    return f"{int(value)}s" if value == int(value) else f"{value:g}s"


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
