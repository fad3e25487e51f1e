"""The benchmark harnesses still run (`--quick`: a second or two per scenario).

Nothing here asserts a timing: benchmarks report figures, tests only check that
the harness works end to end and prints its table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MISSING = [tool for tool in ("dnsperf", "dnsmasq", "nsd") if shutil.which(tool) is None]


def _run(module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs {', '.join(MISSING)}: apt-get install dnsperf dnsmasq nsd (.ci/run does)",
)
def test_dns_benchmark_quick_prints_the_side_by_side_table() -> None:
    out = _run("bench")
    for scenario in (
        "P1 udp", "P1 udp+edns", "P2 udp+churn", "P3 tcp", "P4 udp @scale",
        "P6 plain P1", "P6 P1 + huge@100/s",
    ):  # fmt: skip
        assert f"| {scenario} | dnsreg |" in out
    assert "P6 P1 under huge-service load vs plain" in out
    assert "| P1 udp | dnsmasq |" in out
    assert "| P1 udp | nsd |" in out
    assert "P4 registrations/s" in out
    assert "P5 ack→visible p50/p99" in out


def test_health_benchmark_quick_runs() -> None:
    assert "p99" in _run("bench.health")


def test_watch_benchmark_quick_runs() -> None:
    assert "p99" in _run("bench.watch")


def test_stall_benchmark_quick_prints_one_row_per_operation() -> None:
    out = _run("bench.stalls")
    assert "Loop stalls at 10,000 instances (limit 20 ms)" in out
    for operation in (
        "load 10,000 instances", "registration burst of 1,000", "heartbeats, 1,000",
        "listing 5,000 in pages of 1 000", "listing 5,000 streamed", "/metrics scrape",
        "/v1/status", "DNS A big", "DNS SRV big", "DNS TCP A big", "big-service change + A",
        "blocking query, 100 waiters fire", "SSE subscriber replay",
        "expiry of 1,000 leases at once", "deregistration of 1,000",
    ):  # fmt: skip
        row = next((line for line in out.splitlines() if line.startswith(f"| {operation}")), None)
        assert row is not None, (operation, out)
        assert "FAILED" not in row, row
        assert row.count("|") == 9, row


@pytest.mark.skipif(shutil.which("dnsperf") is None, reason="needs dnsperf (.ci/run installs it)")
def test_a_failing_scenario_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    import argparse

    from bench.__main__ import Bench

    bench = Bench(argparse.Namespace(quick=True, seconds=1.0, rounds=1), tmp_path)

    def failing() -> object:
        # A real dnsperf exiting non-zero (here: its query file is missing), as it does
        # when dnsmasq times out over TCP.
        cmd = ["dnsperf", "-s", "127.0.0.1", "-p", "9", "-m", "tcp", "-l", "1",
               "-d", str(tmp_path / "missing.txt")]  # fmt: skip
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30)
        raise AssertionError("dnsperf succeeded without its query file")

    assert bench.attempt("P3 tcp", "dnsmasq", failing) is None  # type: ignore[arg-type]
    table = bench.table()
    assert "| P3 tcp | dnsmasq | failed: dnsperf exited" in table
