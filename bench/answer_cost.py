"""In-process cost of one DNS answer by service size: ``python -m bench.answer_cost``.

For services of 3, 5 000 and 50 000 instances it times, per query type and
transport, three cases: the first query after a change of the service
(per-service material rebuilt), a query the answer cache misses with the
material warm (a fresh shuffled variant), and a cache hit. It measures the
responder alone (decode, answer, encode), no sockets, with CPU time.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time
from collections.abc import Callable

import dns.message

from dnsreg.core.model import Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Settings
from dnsreg.dns.responder import Responder
from dnsreg.dns.zones import StaticZones

ZONE = "service.local"


def fill(registry: Registry, service: str, count: int) -> None:
    for n in range(count):
        address = ipaddress.ip_address(
            f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            if n % 5
            else f"fd00::{n >> 16 & 0xFFFF:x}:{n & 0xFFFF:x}"
        )
        reg = Registration(service, f"i{n}", address, 8000, weight=1 + n % 7, ttl=0)
        registry.register(reg, now=0.0)


def cost(fn: Callable[[], None], repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def measure(
    registry: Registry, responder: Responder, rtype: str, tcp: bool, repeat: int
) -> tuple[float, float, float]:
    wire = dns.message.make_query(f"big.{ZONE}", rtype, use_edns=0).to_wire()
    extra = iter(range(10**9))

    def after_change() -> None:
        n = next(extra)
        address = ipaddress.ip_address("10.99.0.1")
        registry.register(Registration("big", f"x{n % 2}", address, 1, ttl=0), now=0.0)
        responder.respond(wire, tcp=tcp)

    def miss() -> None:
        responder.cache.clear()
        responder.respond(wire, tcp=tcp)

    first = cost(after_change, repeat)
    missed = cost(miss, repeat * 5)
    for _ in range(10):  # every variant built
        responder.respond(wire, tcp=tcp)
    hit = cost(lambda: responder.respond(wire, tcp=tcp), repeat * 500)
    return first, missed, hit


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_cost", description=__doc__)
    parser.add_argument("--sizes", default="3,5000,50000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print("| instances | query | first after a change | cache miss | cache hit |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for size in (int(s) for s in args.sizes.split(",")):
        registry = Registry()
        fill(registry, "big", size)
        responder = Responder(
            registry, StaticZones(), Settings(origin=parse_name(ZONE)), random.Random(1)
        )
        for rtype in ("A", "AAAA", "SRV", "ANY"):
            for tcp in (False, True):
                first, missed, hit = measure(registry, responder, rtype, tcp, args.repeat)
                label = f"{rtype} {'tcp' if tcp else 'udp'}"
                print(
                    f"| {size:,} | {label} | {first * 1e3:.2f} ms | {missed * 1e6:.0f} µs "
                    f"| {hit * 1e6:.1f} µs |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
