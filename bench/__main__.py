"""``make bench``: dnsreg side by side with dnsmasq and NSD, reported as ratios.

Scenarios (issue 5): P1 cached UDP with and without EDNS, P2 the same under
registration churn every 10 ms, P3 TCP, P4 a registry of 100 000 instances
(registration and heartbeat rates, RSS, P1 again), P5 propagation delays, P6
P1 on the small services while a 50 000-instance service is queried at 100/s
(issue 11). A server that fails a scenario (dnsperf exits non-zero, say
dnsmasq timing out over TCP) is reported as failed, with its error; the run goes on.
Rounds are interleaved (dnsreg, dnsmasq, NSD, repeat) so drift on the machine
hits all three alike. The server runs on core 0 and dnsperf on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench import dnsperf, httpload
from bench.servers import (
    ZONE,
    Dnsmasq,
    Dnsreg,
    Instance,
    Nsd,
    Server,
    dataset,
    rss_mb,
    tree_cpu,
)

TOOLS = {"dnsperf": "dnsperf", "dnsmasq": "dnsmasq", "nsd": "nsd"}


def ensure_tools() -> None:
    """Find dnsperf, dnsmasq and nsd; install the Debian packages that are missing."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    print(f"installing {' '.join(missing)} (Debian packages)", file=sys.stderr)
    sudo = [] if _is_root() else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
    subprocess.run(
        [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
         "--no-install-recommends", *missing],
        check=True,
    )  # fmt: skip


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.seconds = 1.0 if args.quick else args.seconds
        self.rounds = 1 if args.quick else args.rounds
        self.instances = dataset(10, 3)
        names = []
        for s in range(10):
            names.append((f"svc{s}.{ZONE}", "SRV"))
            names.append((f"svc{s}.{ZONE}", "A"))
        self.queries = dnsperf.write_queries(work / "queries.txt", names)
        # rows: (scenario, server) -> list of (qps, cpu_us)
        self.samples: dict[tuple[str, str], list[dnsperf.Result]] = {}
        self.failures: dict[tuple[str, str], str] = {}
        self.extra: dict[str, str] = {}

    def record(self, scenario: str, server: str, result: dnsperf.Result | None) -> None:
        if result is not None:
            self.samples.setdefault((scenario, server), []).append(result)

    def attempt(
        self, scenario: str, server: str, run: Callable[[], dnsperf.Result]
    ) -> dnsperf.Result | None:
        """Run one measurement; a failure is recorded against its row and the run goes on."""
        try:
            return run()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError) as exc:
            self.failures[(scenario, server)] = _describe(exc)
            print(f"{scenario} / {server} failed: {_describe(exc)}", file=sys.stderr)
            return None

    # ------------------------------------------------------------------ P1-P3
    def query_rounds(self) -> None:
        servers: list[Server] = [Dnsreg(), Dnsmasq(), Nsd()]
        for n, server in enumerate(servers):
            server.start(self.work / f"{server.name}-{n}", self.instances, core=0)
        try:
            for _ in range(self.rounds):
                for server in servers:
                    self._round(server)
        finally:
            for server in servers:
                server.stop()

    def _round(self, server: Server) -> None:
        """P1-P3 once against ``server``."""
        q, secs = self.queries, self.seconds

        def measure(scenario: str, run: Callable[[], dnsperf.Result]) -> None:
            self.record(scenario, server.name, self.attempt(scenario, server.name, run))

        measure("P1 udp", lambda: dnsperf.run(server, q, secs))
        measure("P1 udp+edns", lambda: dnsperf.run(server, q, secs, edns=True))
        if isinstance(server, Dnsreg):
            dnsreg = server
            measure("P2 udp+churn", lambda: self._churn(dnsreg))
        measure("P3 tcp", lambda: dnsperf.run(server, q, secs, tcp=True))

    def _churn(self, server: Dnsreg) -> dnsperf.Result:
        """P2: dnsperf while a registration changes every 10 ms (each invalidates a service)."""

        def change(n: int) -> httpload.Request:
            return httpload.register_request(
                f"svc{n % 10}", "churn", f"10.200.0.{n % 250 + 1}", 9000, ttl=0
            )

        outcome: list[httpload.LoadResult] = []
        thread = threading.Thread(
            target=lambda: outcome.append(
                asyncio.run(httpload.paced(server.http_port, change, 0.01, self.seconds))
            ),
            daemon=True,
        )
        thread.start()
        try:
            return dnsperf.run(server, self.queries, self.seconds, warmup=False)
        finally:
            thread.join()
            done = outcome[0] if outcome else None
            if done is not None:
                self.extra["P2 changes/s"] = f"{done.rate:.0f} ({done.errors} errors)"

    # --------------------------------------------------------------------- P4
    def scale(self) -> None:
        services, per = (200, 5) if self.args.quick else (10_000, 10)
        server = Dnsreg()
        server.start(self.work / "dnsreg-scale", [], core=0)
        try:
            regs = [
                httpload.register_request(i.service, i.id, i.address, i.port, ttl=600)
                for i in dataset(services, per)
            ]
            cpu = tree_cpu(server)
            result = asyncio.run(httpload.run(server.http_port, regs, self.args.http_clients))
            cpu, used = tree_cpu(server), tree_cpu(server) - cpu
            self.extra["P4 instances"] = f"{len(regs)} in {services} services"
            self.extra["P4 registrations/s"] = (
                f"{result.rate:.0f} ({result.errors} errors; server CPU "
                f"{used / len(regs) * 1e6:.0f} µs each, {used / result.seconds:.0%} of a core)"
            )
            beats = [httpload.heartbeat_request(i.service, i.id) for i in dataset(services, per)]
            result = asyncio.run(httpload.run(server.http_port, beats, self.args.http_clients))
            used = tree_cpu(server) - cpu
            self.extra["P4 heartbeats/s"] = (
                f"{result.rate:.0f} ({result.errors} errors; server CPU "
                f"{used / len(beats) * 1e6:.0f} µs each, {used / result.seconds:.0%} of a core)"
            )
            self.extra["P4 server RSS"] = f"{rss_mb(server.pid):.0f} MB"
            names = []
            for s in range(0, services, max(1, services // 1000)):
                names += [(f"svc{s}.{ZONE}", "SRV"), (f"svc{s}.{ZONE}", "A")]
            big = dnsperf.write_queries(self.work / "queries-big.txt", names)
            for _ in range(self.rounds):
                self.record("P4 udp @scale", "dnsreg", dnsperf.run(server, big, self.seconds))
        finally:
            server.stop()

    # --------------------------------------------------------------------- P5
    def propagation(self) -> None:
        import dns.message
        import dns.query

        samples = 20 if self.args.quick else 200
        server = Dnsreg()
        server.start(self.work / "dnsreg-prop", [], core=0)

        def present(service: str) -> bool:
            q = dns.message.make_query(f"{service}.{ZONE}", "A")
            return bool(dns.query.udp(q, "127.0.0.1", port=server.port, timeout=1).answer)

        try:
            visible: list[float] = []
            for k in range(samples):
                inst = Instance(f"prop{k}", "p", f"10.201.{k // 250}.{k % 250 + 1}", 80)
                server.register(inst, ttl=0)
                acked = time.perf_counter()
                while not present(inst.service):
                    if time.perf_counter() - acked > 10:
                        raise RuntimeError(f"{inst.service} not in DNS 10 s after its 2xx")
                visible.append((time.perf_counter() - acked) * 1000)
            # A steady population, as in any real registry: the self-preservation guard
            # (rightly) pauses expiry when most leases lapse together.
            steady = [
                httpload.register_request("steady", f"s{k}", f"10.203.{k // 250}.{k % 250 + 1}",
                                          80, ttl=3600)
                for k in range(4 * samples)
            ]  # fmt: skip
            asyncio.run(httpload.run(server.http_port, steady, 8))
            gone: list[float] = []
            pending: dict[str, float] = {}
            for k in range(samples):
                inst = Instance(f"exp{k}", "e", f"10.202.{k // 250}.{k % 250 + 1}", 80)
                reply = server.register(inst, ttl=1)
                pending[inst.service] = float(reply["lease_deadline"])  # type: ignore[arg-type]
            give_up = time.time() + 30
            while pending:
                if time.time() > give_up:
                    raise RuntimeError(f"still in DNS 30 s after their deadline: {sorted(pending)}")
                for service, deadline in list(pending.items()):
                    if not present(service):
                        gone.append((time.time() - deadline) * 1000)
                        del pending[service]
            self.extra["P5 ack→visible p50/p99"] = (
                f"{pct(visible, 0.5):.2f} / {pct(visible, 0.99):.2f} ms"
            )
            self.extra["P5 deadline→gone p50/p99"] = (
                f"{pct(gone, 0.5):.1f} / {pct(gone, 0.99):.1f} ms"
            )
        finally:
            server.stop()

    # --------------------------------------------------------------------- P6
    def big_service(self) -> None:
        """P6: P1 on the small services, alone and while a huge service is queried at 100/s.

        The huge service's queries vary their EDNS buffer size, so most are
        answer-cache misses: each is answered from the per-service material.
        """
        big = 2_000 if self.args.quick else 50_000
        server = Dnsreg()
        server.start(self.work / "dnsreg-big", self.instances, core=0)
        try:
            regs = [
                httpload.register_request("huge", f"h{n}", _huge_address(n), 9000, ttl=0)
                for n in range(big)
            ]
            loaded = asyncio.run(httpload.run(server.http_port, regs, self.args.http_clients))
            self.extra["P6 huge service"] = f"{big} instances ({loaded.errors} errors registering)"
            # The huge service's material is built by its first query (~30 ms at 50 000, once):
            # warm it, as dnsperf warms the answer cache, so P6 measures the steady state.
            _warm_huge(server.port)
            for _ in range(self.rounds):
                self.record(
                    "P6 plain P1", "dnsreg",
                    self.attempt("P6 plain P1", "dnsreg",
                                 lambda: dnsperf.run(server, self.queries, self.seconds)),
                )  # fmt: skip
                stop = threading.Event()
                latencies: list[float] = []
                thread = threading.Thread(
                    target=_query_huge, args=(server.port, stop, latencies), daemon=True
                )
                thread.start()
                try:
                    self.record(
                        "P6 P1 + huge@100/s", "dnsreg",
                        self.attempt("P6 P1 + huge@100/s", "dnsreg",
                                     lambda: dnsperf.run(server, self.queries, self.seconds)),
                    )  # fmt: skip
                finally:
                    stop.set()
                    thread.join()
                answered = [x for x in latencies if x == x]
                self.extra["P6 huge-service queries"] = (
                    f"{len(latencies)} sent, {len(answered)} answered, "
                    f"p50/max {pct(answered, 0.5) * 1e3:.1f} / "
                    f"{max(answered, default=float('nan')) * 1e3:.1f} ms"
                )
            plain = median([r.qps for r in self.samples.get(("P6 plain P1", "dnsreg"), [])])
            loaded_qps = median(
                [r.qps for r in self.samples.get(("P6 P1 + huge@100/s", "dnsreg"), [])]
            )
            self.extra["P6 P1 under huge-service load vs plain"] = f"{loaded_qps / plain:.2f}×"
        finally:
            server.stop()

    # ------------------------------------------------------------------ report
    def table(self) -> str:
        rows = [
            "| scenario | server | queries/s | CPU µs/query | qps vs dnsmasq | qps vs NSD "
            "| CPU vs dnsmasq | CPU vs NSD |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        scenarios = list(dict.fromkeys(s for s, _ in self.samples))

        def stat(scenario: str, server: str) -> tuple[float, float]:
            results = self.samples.get((scenario, server), [])
            return median([r.qps for r in results]), median([r.cpu_us_per_query for r in results])

        scenarios += [s for s, _ in self.failures if s not in scenarios]
        for scenario in scenarios:
            for server in ("dnsreg", "dnsmasq", "nsd"):
                error = self.failures.get((scenario, server))
                if error is not None:
                    rows.append(f"| {scenario} | {server} | failed: {error} | | | | | |")
            base = scenario if (scenario, "dnsmasq") in self.samples else "P1 udp"
            mq, mc = stat(base, "dnsmasq")
            nq, nc = stat(base, "nsd")
            for server in ("dnsreg", "dnsmasq", "nsd"):
                if (scenario, server) not in self.samples:
                    continue
                q, c = stat(scenario, server)
                rows.append(
                    f"| {scenario} | {server} | {q:,.0f} | {c:.1f} | {q / mq:.2f}× | {q / nq:.2f}× "
                    f"| {c / mc:.2f}× | {c / nc:.2f}× |"
                )
        lines = ["\n".join(rows), ""]
        for key, value in self.extra.items():
            lines.append(f"- {key}: {value}")
        return "\n".join(lines)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:]
        detail = f": {tail[0][:120]}" if tail else ""
        program = Path(str(exc.cmd[0])).name if exc.cmd else "command"
        return f"{program} exited {exc.returncode}{detail}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc) else ''}"


def _huge_address(n: int) -> str:
    return f"10.{100 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def _warm_huge(port: int) -> None:
    """One query of each type the P6 load sends, answered before the rounds start."""
    import dns.message
    import dns.query

    for rtype in ("A", "SRV", "ANY"):
        q = dns.message.make_query(f"huge.{ZONE}", rtype, use_edns=0, payload=1232)
        dns.query.udp(q, "127.0.0.1", port=port, timeout=10.0, ignore_trailing=True)


def _query_huge(port: int, stop: threading.Event, latencies: list[float]) -> None:
    """A, SRV and ANY for the huge service at 100/s over UDP; NaN marks an unanswered one."""
    import dns.message

    rng = random.Random(6)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    n = 0
    next_at = time.perf_counter()
    try:
        while not stop.is_set():
            rtype = ("A", "SRV", "ANY")[n % 3]
            q = dns.message.make_query(
                f"huge.{ZONE}", rtype, use_edns=0, payload=512 + rng.randrange(720)
            )
            started = time.perf_counter()
            sock.sendto(q.to_wire(), ("127.0.0.1", port))
            try:
                sock.recv(65535)
                latencies.append(time.perf_counter() - started)
            except TimeoutError:
                latencies.append(float("nan"))
            n += 1
            next_at += 0.01
            stop.wait(max(0.0, next_at - time.perf_counter()))
    finally:
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a second per scenario (harness check)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", default="P1,P4,P5,P6", help="P1 (covers P1-P3), P4, P5, P6")
    parser.add_argument(
        "--http-clients", type=int, default=64, help="keep-alive connections for P4 (64)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    ensure_tools()
    only = {s.strip().upper() for s in args.only.split(",")}
    with tempfile.TemporaryDirectory(prefix="dnsreg-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        if "P1" in only:
            bench.query_rounds()
        if "P4" in only:
            bench.scale()
        if "P5" in only:
            bench.propagation()
        if "P6" in only:
            bench.big_service()
        print(bench.table())
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "samples": {
                            f"{s}/{v}": [r.__dict__ for r in rs]
                            for (s, v), rs in bench.samples.items()
                        },
                        "extra": bench.extra,
                    },
                    indent=2,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
