"""Run dnsperf against a server and read what it reports."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.servers import Server, pinned, tree_cpu


@dataclass(frozen=True)
class Result:
    qps: float
    completed: int
    lost: int
    cpu_us_per_query: float


def write_queries(path: Path, names: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{name} {rtype}\n" for name, rtype in names))
    return path


def run(
    server: Server,
    queries: Path,
    seconds: float,
    *,
    edns: bool = False,
    tcp: bool = False,
    core: int | None = 1,
    warmup: bool = True,
) -> Result:
    # -c 4 -q 100: more outstanding queries overflowed dnsperf's receive buffer (issue 5 facts).
    base = ["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", str(queries),
            "-c", "4", "-q", "100", "-t", "1"]  # fmt: skip
    if edns:
        base += ["-e", "-D"]  # EDNS0 with DO, as validating resolvers send it
    if tcp:
        base += ["-m", "tcp"]
    if warmup:
        # Fill the answer cache (every shuffled variant of every name) before measuring:
        # P1 is the steady state of a resolver fleet, not the first second after a start.
        subprocess.run(
            pinned([*base, "-n", "10"], core), capture_output=True, text=True, check=True,
            timeout=120,
        )  # fmt: skip
    cmd = [*base, "-l", str(seconds)]
    before = tree_cpu(server)
    out = subprocess.run(
        pinned(cmd, core), capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    used = tree_cpu(server) - before
    qps = float(_field(out, r"Queries per second:\s+([\d.]+)"))
    completed = int(_field(out, r"Queries completed:\s+(\d+)"))
    lost = int(_field(out, r"Queries lost:\s+(\d+)"))
    return Result(qps, completed, lost, used / completed * 1e6 if completed else float("nan"))


def _field(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"dnsperf output lacks {pattern!r}:\n{text}")
    return m.group(1)
