"""Draining an instance: withdraw it from DNS, then wait out the resolvers' caches. Pure.

A caching resolver may keep handing out an address for as long as the TTL it was
given (RFC 1035 §3.2.1, RFC 2181 §8), whatever the server says afterwards. So after
an instance leaves DNS, traffic can keep arriving for up to the longest TTL its
records were served with. dnsreg serves an instance's A/AAAA/SRV/TXT records with
its own ``dns_ttl``, and an RRset of several instances with the smallest of theirs
(RFC 2181 §5.2: one TTL per RRset), so the instance's ``dns_ttl`` bounds them all.

The server withdraws at once and answers with how long to wait; the client (the
``dnsreg drain`` command, ``dnsreg run`` on SIGTERM) does the waiting, on a
monotonic clock. Every function takes ``now``: tested on a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnsreg.core.durations import parse_duration
from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Instance

DRAIN_REASON = "draining"
MAX_REASON_CHARS = 200


def drain_wait(instance: Instance) -> float:
    """Seconds a resolver may still hold the instance's records once it left DNS."""
    return float(instance.reg.dns_ttl)


def drain_reason(reason: str | None) -> str:
    """The maintenance reason a drain sets: "draining" unless the caller named one."""
    if reason is None or not reason.strip():
        return DRAIN_REASON
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"reason: at most {MAX_REASON_CHARS} characters", field="reason")
    return reason


def parse_wait_override(text: str | float | None) -> float | None:
    """``--wait D`` / ``--drain-wait D``: a duration, 0 to skip; None keeps the TTL."""
    if text is None:
        return None
    return parse_duration(text, field="wait")


@dataclass(frozen=True, slots=True)
class DrainTimer:
    """The wait after a withdrawal: started at ``started`` (monotonic), ``wait`` long."""

    started: float
    wait: float

    @property
    def deadline(self) -> float:
        return self.started + self.wait

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now)

    def done(self, now: float) -> bool:
        return now >= self.deadline


def start_timer(now: float, server_wait: float, override: float | None = None) -> DrainTimer:
    """The client's timer: the server's wait (the instance's TTL) unless overridden."""
    wait = server_wait if override is None else override
    if wait < 0:
        raise InvalidInput(f"wait: must not be negative, got {wait:g}", field="wait")
    return DrainTimer(now, wait)
