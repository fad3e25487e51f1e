"""Response rate limiting (RRL) for DNS over UDP. Pure: ``now`` is passed in.

UDP source addresses can be forged, so a server that answers every datagram
is an amplifier aimed at whoever the forger names. As NSD and BIND do
(opt-in, ``rate_limit``), responses to one network, a /24 for IPv4 or a /56
for IPv6, are limited to ``rate`` per second by a token bucket (one second
of burst). Of the responses over the limit, every ``slip``-th goes out
anyway as an empty reply with TC=1, so a real client behind that network
retries over TCP (which cannot be forged) and still gets its answer; the
others are dropped. TCP is never limited.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

DEFAULT_MAX_BUCKETS = 100_000
AF_INET = 2
AF_INET6 = 10  # Linux
V4_PREFIX_OCTETS = 3  # /24
V6_PREFIX_OCTETS = 7  # /56
TC = 0x02  # in the third header octet


class Verdict(enum.Enum):
    SEND = "send"
    SLIP = "slip"  # send an empty reply with TC=1 instead
    DROP = "drop"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets per client network; counts what it slipped and dropped."""

    def __init__(
        self, rate: float, slip: int = 2, *, max_buckets: int = DEFAULT_MAX_BUCKETS
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be above 0")
        if slip < 0:
            raise ValueError("slip must be 0 (drop all) or more")
        self.rate = rate
        self.burst = max(1.0, rate)  # one second's worth
        self.slip = slip
        self.max_buckets = max_buckets
        self.buckets: dict[bytes, _Bucket] = {}
        self.limited = 0
        self.slipped = 0
        self.dropped = 0

    def check(self, network: bytes, now: float) -> Verdict:
        """Whether a response to ``network`` (a prefix, see below) may go out at ``now``."""
        bucket = self.buckets.get(network)
        if bucket is None:
            if len(self.buckets) >= self.max_buckets:
                self._prune(now)
            self.buckets[network] = _Bucket(self.burst - 1.0, now)
            return Verdict.SEND
        elapsed = now - bucket.stamp
        if elapsed > 0:
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.SEND
        self.limited += 1
        if self.slip and self.limited % self.slip == 0:
            self.slipped += 1
            return Verdict.SLIP
        self.dropped += 1
        return Verdict.DROP

    def _prune(self, now: float) -> None:
        # A bucket refilled to the brim is the same as no bucket: forget those first.
        full = self.burst / self.rate
        stale = [k for k, b in self.buckets.items() if now - b.stamp >= full]
        for key in stale:
            del self.buckets[key]
        if len(self.buckets) >= self.max_buckets:
            self.buckets.clear()  # a flood of forged networks: start over rather than grow


def network_of_host(host: str) -> bytes:
    """The /24 or /56 an address (as the socket module spells it) belongs to."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        return address.packed[:V4_PREFIX_OCTETS]
    return address.packed[:V6_PREFIX_OCTETS]


def network_of_sockaddr(raw: bytes | memoryview) -> bytes:
    """The same, from a raw ``struct sockaddr_in``/``sockaddr_in6`` (Linux layout)."""
    family = raw[0] | (raw[1] << 8)
    if family == AF_INET:
        return bytes(raw[4 : 4 + V4_PREFIX_OCTETS])
    if family == AF_INET6:
        address = bytes(raw[8:24])
        if address[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped: limit as IPv4
            return address[12 : 12 + V4_PREFIX_OCTETS]
        return address[:V6_PREFIX_OCTETS]
    return bytes(raw[:8])


def slip_reply(reply: bytes) -> bytes:
    """``reply`` cut to its header and question, with TC set: "ask again over TCP"."""
    if len(reply) < 12:
        return reply
    qdcount = (reply[4] << 8) | reply[5]
    end = 12
    if qdcount == 1:
        pos = 12
        while pos < len(reply) and 0 < reply[pos] < 64:  # uncompressed labels
            pos += 1 + reply[pos]
        if pos < len(reply) and reply[pos] == 0 and pos + 5 <= len(reply):
            end = pos + 5
        else:
            qdcount = 0
    else:
        qdcount = 0
    return (
        reply[:2]
        + bytes((reply[2] | TC, reply[3]))
        + qdcount.to_bytes(2, "big")
        + b"\0\0\0\0\0\0"
        + reply[12:end]
    )
