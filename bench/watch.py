"""Change notification under load: SSE watchers and blocking queries while registrations churn.

    python -m bench.watch            # 1 000 SSE watchers + 1 000 blocking queries, 100 changes/s
    python -m bench.watch --quick    # small, a few seconds

The server runs in its own process (pinned to core 0 when there are two or
more); watchers and blocking queries run in worker processes (the other cores),
the writer in this one. Every registration carries its send time in its
metadata (``meta.t``, CLOCK_MONOTONIC, which all processes on the host share),
so a watcher measures delivery latency from the event alone: receive time
minus send time, i.e. HTTP request + registry + fan-out + delivery.

Reported: SSE event latency p50/p99/max, blocking-query wake latency p50/p99,
events delivered vs expected (nothing may be lost), and the server's CPU share
(utime+stime from /proc over the measured window, as a share of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench.servers import Dnsreg, Instance, cpu_seconds


@dataclass(frozen=True)
class Settings:
    watchers: int
    blocking: int
    rate: float
    seconds: float
    services: int
    per_service: int
    workers: int
    firehose: bool  # every watcher watches every service

    def service(self, n: int) -> str:
        return f"w{n:03d}"


def now() -> float:
    return time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the host


# ------------------------------------------------------------------------ workers
def worker_main(
    conn: Connection, base: str, settings: Settings, index: int, core: int | None
) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        import uvloop

        uvloop.run(_worker(conn, base, settings, index))
    except ImportError:
        asyncio.run(_worker(conn, base, settings, index))


class _Inst(msgspec.Struct):
    revision: int
    meta: dict[str, str]


class _Listing(msgspec.Struct):
    revision: int
    instances: list[_Inst]


class _Event(msgspec.Struct):
    instance: _Inst | None


class Http:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    The load generator shares the machine with the server; aiohttp's client
    costs several times more CPU per request than this, which would show up
    as latency that is the client's, not the server's.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, target: str) -> tuple[dict[str, str], asyncio.StreamReader]:
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1]
        if status != "200":
            raise RuntimeError(f"GET {target}: {lines[0]}")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers, self.reader

    async def get(self, target: str) -> tuple[dict[str, str], bytes]:
        headers, reader = await self.request(target)
        body = await reader.readexactly(int(headers["content-length"]))
        return headers, body


async def _worker(conn: Connection, base: str, settings: Settings, index: int) -> None:
    host, port = base.removeprefix("http://").split(":")
    n_watch = _share(settings.watchers, settings.workers, index)
    n_block = _share(settings.blocking, settings.workers, index)
    sse: list[float] = []
    blocking: list[float] = []
    counts: dict[str, int] = {}  # prefix -> events received (summed over watchers)
    measuring = False
    stop = asyncio.Event()
    connected = 0
    ready = asyncio.Event()
    total = n_watch + n_block
    decode_event = msgspec.json.Decoder(_Event).decode
    decode_listing = msgspec.json.Decoder(_Listing).decode

    def arrived() -> None:
        nonlocal connected
        connected += 1
        if connected == total:
            ready.set()

    async def watcher(prefix: str) -> None:
        http = Http(host, int(port))
        await http.open()
        headers, reader = await http.request(f"/v1/events?prefix={prefix}")
        assert headers.get("transfer-encoding") == "chunked"
        arrived()
        while True:
            # One chunk per server write; the server writes whole SSE frames.
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            received = now()
            if not measuring:
                continue
            for frame in chunk.split(b"\n\n"):
                at = frame.find(b"data: ")
                if at < 0:
                    continue
                instance = decode_event(frame[at + 6 :]).instance
                if instance is not None and "t" in instance.meta:
                    sse.append(received - float(instance.meta["t"]))
                    counts[prefix] = counts.get(prefix, 0) + 1

    async def blocker(service: str) -> None:
        http = Http(host, int(port))
        await http.open()
        target = f"/v1/services/{service}"
        headers, _ = await http.get(target)
        revision = int(headers["x-dnsreg-index"])
        arrived()
        while not stop.is_set():
            _, body = await http.get(f"{target}?index={revision}&wait=60s")
            received = now()
            listing = decode_listing(body)
            changed = [
                float(i.meta["t"])
                for i in listing.instances
                if i.revision > revision and "t" in i.meta
            ]
            if measuring and changed:
                # The first change after our index is what should have woken us.
                blocking.append(received - min(changed))
            revision = listing.revision

    def prefix_of(n: int) -> str:
        return "" if settings.firehose else settings.service(n % settings.services)

    offset = index * 7919  # spread each worker's watchers over different services
    tasks = [asyncio.create_task(watcher(prefix_of(offset + n))) for n in range(n_watch)]
    tasks += [
        asyncio.create_task(blocker(settings.service((offset + n) % settings.services)))
        for n in range(n_block)
    ]
    await ready.wait()
    conn.send("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "measure"
    measuring = True
    await loop.run_in_executor(None, conn.recv)  # "stop"
    measuring = False
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send({"sse": sse, "blocking": blocking, "counts": counts})


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


# ------------------------------------------------------------------------- writer
async def churn(
    base: str,
    settings: Settings,
    seconds: float,
    log: list[str],
    acks: list[float],
    errors: list[str],
) -> int:
    """Re-register random instances at ``settings.rate`` per second (open loop).

    Up to 256 writes in flight: enough that a write never waits for a free
    connection while the server keeps up (which would count the writer's own
    queue as delivery latency), bounded so that an overloaded server sees a
    queue rather than a connection storm. ``acks`` gets each write's round trip
    (the server answers once the write is durable); ``errors`` counts failures.
    """
    rng = random.Random(1)
    interval = 1.0 / settings.rate
    sent = 0
    pending: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(service: str, instance: str, port: int) -> None:
            sent_at = now()
            body = {"address": "10.0.0.1", "port": port, "ttl": 0, "meta": {"t": repr(sent_at)}}
            url = f"{base}/v1/services/{service}/instances/{instance}"
            try:
                async with http.put(url, json=body) as resp:
                    if resp.status not in (200, 201):
                        raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                errors.append(f"{service}/{instance}: {exc}")
                return
            acks.append(now() - sent_at)
            log.append(service)

        start = now()
        while now() - start < seconds:
            service = settings.service(rng.randrange(settings.services))
            instance = f"i{rng.randrange(settings.per_service)}"
            task = asyncio.create_task(one(service, instance, 8000 + sent % 1000))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            # Sleep until the next slot of the schedule, not for a fixed interval.
            await asyncio.sleep(max(0.0, start + sent * interval - now()))
        await asyncio.gather(*pending)
    return sent


# --------------------------------------------------------------------------- main
def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def ms(values: list[float], q: float) -> float | None:
    """The q-quantile in milliseconds (None when nothing was measured)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 2)


def run(settings: Settings) -> dict[str, Any]:
    cores = os.sched_getaffinity(0)
    server_core = min(cores) if len(cores) > 1 else None
    client_cores = sorted(cores - {server_core}) if server_core is not None else [None]
    server = Dnsreg()
    with tempfile.TemporaryDirectory(prefix="dnsreg-bench-watch-") as work:
        server.start(Path(work), [], server_core)
        base = f"http://127.0.0.1:{server.http_port}"
        try:
            for s in range(settings.services):
                for i in range(settings.per_service):
                    server.register(Instance(settings.service(s), f"i{i}", "10.0.0.1", 8000 + i))
            ctx = mp.get_context("spawn")
            links = []
            procs = []
            for w in range(settings.workers):
                parent, child = ctx.Pipe()
                core = client_cores[w % len(client_cores)]
                proc = ctx.Process(
                    target=worker_main, args=(child, base, settings, w, core), daemon=True
                )
                proc.start()
                links.append(parent)
                procs.append(proc)
            for link in links:
                if not link.poll(120):
                    raise RuntimeError("workers did not connect in time")
                assert link.recv() == "ready"
            if client_cores[0] is not None:
                os.sched_setaffinity(0, {client_cores[-1]})
            # Warm up (the writer's connections, the server's caches), then measure.
            asyncio.run(churn(base, settings, min(2.0, settings.seconds / 4), [], [], []))
            time.sleep(0.5)  # warm-up events still in flight must not be counted
            for link in links:
                link.send("measure")
            cpu0, wall0 = cpu_seconds(server.pid), now()
            clients0 = sum(cpu_seconds(p.pid) for p in procs if p.pid) + _own_cpu()
            log: list[str] = []
            acks: list[float] = []
            errors: list[str] = []
            sent = asyncio.run(churn(base, settings, settings.seconds, log, acks, errors))
            time.sleep(0.5)  # let the last events arrive before the watchers stop counting
            cpu1, wall1 = cpu_seconds(server.pid), now()
            clients1 = sum(cpu_seconds(p.pid) for p in procs if p.pid) + _own_cpu()
            for link in links:
                link.send("stop")
            results = []
            for link in links:
                if not link.poll(60):
                    raise RuntimeError("a worker did not report its results")
                results.append(link.recv())
            for proc in procs:
                proc.join(30)
        finally:
            server.stop()
    sse = [v for r in results for v in r["sse"]]
    blocking = [v for r in results for v in r["blocking"]]
    received = sum(sum(r["counts"].values()) for r in results)
    per_service = {s: log.count(s) for s in set(log)}
    if settings.firehose:
        expected = settings.watchers * len(log)
    else:
        expected = sum(
            per_service.get(settings.service(n % settings.services), 0)
            for w in range(settings.workers)
            for n in range(w * 7919, w * 7919 + _share(settings.watchers, settings.workers, w))
        )
    return {
        "watchers": settings.watchers,
        "blocking_queries": settings.blocking,
        "services": settings.services,
        "firehose": settings.firehose,
        "changes": sent,
        "change_rate": round(sent / settings.seconds, 1),
        "write_errors": len(errors),
        "sse_events_expected": expected,
        "sse_events_received": received,
        "sse_latency_ms": {
            "p50": ms(sse, 0.50),
            "p99": ms(sse, 0.99),
            "max": ms(sse, 1.0),
            "mean": round(statistics.fmean(sse) * 1000, 2) if sse else None,
        },
        "blocking_wakeups": len(blocking),
        "blocking_latency_ms": {
            "p50": ms(blocking, 0.50),
            "p99": ms(blocking, 0.99),
        },
        "register_ack_ms": {
            "p50": ms(acks, 0.50),
            "p99": ms(acks, 0.99),
        },
        "server_cpu_share_of_one_core": round((cpu1 - cpu0) / (wall1 - wall0), 3),
        "server_pinned_core": server_core,
        # The load generator shares the machine: if it is near its cores' limit,
        # part of the latency above is its own.
        "clients_cpu_share": round((clients1 - clients0) / (wall1 - wall0), 3),
        "client_cores": client_cores,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.watch", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100 + 100 clients, 20 changes/s, 4 s")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--blocking", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0, help="changes per second")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window")
    p.add_argument("--services", type=int, default=20, help="watchers spread over this many")
    p.add_argument("--per-service", dest="per_service", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument("--firehose", action="store_true", help="every watcher watches everything")
    args = p.parse_args(argv)
    if args.quick:
        args.watchers, args.blocking, args.rate, args.seconds = 100, 100, 20.0, 4.0
    settings = Settings(
        watchers=args.watchers,
        blocking=args.blocking,
        rate=args.rate,
        seconds=args.seconds,
        services=args.services,
        per_service=args.per_service,
        workers=args.workers,
        firehose=args.firehose,
    )
    result = run(settings)
    print(json.dumps(result, indent=2))
    lost = result["sse_events_expected"] - result["sse_events_received"]
    if lost > 0:
        print(f"bench.watch: {lost} event(s) not delivered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
