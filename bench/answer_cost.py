"""In-process cost of DNS answers and zone bookkeeping by size: ``python -m bench.answer_cost``.

Measures the pure DNS side alone (decode, answer, encode; no sockets), in CPU
time per call (``time.process_time``), median and worst of the repetitions:

- per query type and transport at 3, 5 000, 50 000 and 100 000 instances: the
  first query after a change of the service (its material patched), a query the
  answer cache misses with the material warm, a cache hit;
- building a service's material from nothing (what every change cost before
  materials were patched);
- the IXFR journal's bookkeeping per change at 100 and 1 000 services;
- DNS-SD names (``_svc._tcp`` PTR browsing, an instance's SRV/TXT) on a miss.

Run it on a quiet machine; the loop-stall bound it checks is ~20 ms per call.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import time
from collections.abc import Callable, Iterator

import dns.message

from dnsreg.core.model import Registration
from dnsreg.core.names import parse_name
from dnsreg.core.registry import Registry
from dnsreg.dns.answers import Question, Settings, answer
from dnsreg.dns.material_cache import MaterialCache
from dnsreg.dns.records import A
from dnsreg.dns.responder import Responder
from dnsreg.dns.transfer import Journal
from dnsreg.dns.zones import StaticZones

ZONE = "service.local"
ORIGIN = parse_name(ZONE)


def address(n: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if n % 5:
        return ipaddress.IPv4Address(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    return ipaddress.IPv6Address(f"fd00::{n >> 16 & 0xFFFF:x}:{n & 0xFFFF:x}")


def fill(registry: Registry, service: str, count: int, *, start: int = 0) -> None:
    for n in range(start, start + count):
        reg = Registration(service, f"i{n}", address(n), 8000, weight=1 + n % 7, ttl=0)
        registry.register(reg, now=0.0)


def cost(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and worst CPU seconds of one call."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times), max(times)


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1e3:.2f} / {pair[1] * 1e3:.2f}"


def queries(registry: Registry, responder: Responder, repeat: int) -> Iterator[str]:
    changes = iter(range(10**9))
    for rtype in ("A", "AAAA", "SRV", "ANY"):
        for tcp in (False, True):
            wire = dns.message.make_query(f"big.{ZONE}", rtype, use_edns=0).to_wire()

            def after_change(wire: bytes = wire, tcp: bool = tcp) -> None:
                n = next(changes)
                reg = Registration("big", f"x{n % 2}", address(n), 1, ttl=0)
                registry.register(reg, now=0.0)
                responder.respond(wire, tcp=tcp)

            def miss(wire: bytes = wire, tcp: bool = tcp) -> None:
                responder.cache.clear()
                responder.respond(wire, tcp=tcp)

            first = cost(after_change, repeat)
            missed = cost(miss, repeat * 3)
            for _ in range(10):  # every variant built
                responder.respond(wire, tcp=tcp)

            def again(wire: bytes = wire, tcp: bool = tcp) -> None:
                responder.respond(wire, tcp=tcp)

            hit = cost(again, repeat * 50)
            yield (
                f"{rtype} {'tcp' if tcp else 'udp'} | {ms(first)} | {ms(missed)} "
                f"| {hit[0] * 1e6:.1f} µs"
            )


def rebuild(registry: Registry, repeat: int) -> tuple[float, float]:
    """An A query's material built from nothing (a fresh cache each time)."""
    settings = Settings(origin=ORIGIN)
    q = Question(("big", *ORIGIN), A)
    return cost(
        lambda: answer(q, registry, StaticZones(), settings, random.Random(1), MaterialCache()),
        repeat,
    )


def journal_cost(services: int, per_service: int, repeat: int) -> tuple[float, float]:
    registry = Registry()
    for s in range(services):
        fill(registry, f"svc{s}", per_service, start=s * per_service)
    journal = Journal(registry, Settings(origin=ORIGIN), StaticZones())
    changes = iter(range(10**9))

    def change() -> None:
        n = next(changes)
        reg = Registration(f"svc{n % services}", f"x{n}", address(n), 1, ttl=0)
        registry.register(reg, now=0.0)
        journal.touch(reg.service, reg.id)
        journal.observe()

    return cost(change, repeat)


def dnssd_cost(registry: Registry, responder: Responder, repeat: int) -> Iterator[str]:
    for name, rtype in (("_big._tcp", "PTR"), ("_big._tcp", "SRV"), ("i7._big._tcp", "SRV")):
        wire = dns.message.make_query(f"{name}.{ZONE}", rtype, use_edns=0).to_wire()
        for tcp in (False, True):

            def miss(wire: bytes = wire, tcp: bool = tcp) -> None:
                responder.cache.clear()
                responder.respond(wire, tcp=tcp)

            yield f"{name} {rtype} {'tcp' if tcp else 'udp'} | {ms(cost(miss, repeat))}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_cost", description=__doc__)
    parser.add_argument("--sizes", default="3,5000,50000,100000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--services", default="100,1000", help="journal: services of 3 each")
    args = parser.parse_args()
    print("CPU ms per call, median / worst (hits: µs, median)\n")
    print("| instances | query | first after a change | cache miss | cache hit |")
    print("| ---: | --- | ---: | ---: | ---: |")
    sized: list[tuple[int, Registry, Responder]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        registry = Registry()
        fill(registry, "big", size)
        responder = Responder(registry, StaticZones(), Settings(origin=ORIGIN), random.Random(1))
        sized.append((size, registry, responder))
        for row in queries(registry, responder, args.repeat):
            print(f"| {size:,} | {row} |")
    print("\n| instances | material built from nothing (A) |\n| ---: | ---: |")
    for size, registry, _ in sized:
        print(f"| {size:,} | {ms(rebuild(registry, max(3, args.repeat // 4)))} |")
    print("\n| instances | DNS-SD name, cache miss |  |\n| ---: | --- | ---: |")
    for size, registry, responder in sized:
        for row in dnssd_cost(registry, responder, args.repeat):
            print(f"| {size:,} | {row} |")
    print("\n| services (3 instances each) | journal per change |\n| ---: | ---: |")
    for services in (int(s) for s in args.services.split(",")):
        print(f"| {services:,} | {ms(journal_cost(services, 3, args.repeat))} |")
    big = journal_cost(1, 100_000, max(3, args.repeat // 4))
    print(f"| 1 of 100,000 | {ms(big)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
