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
    for scenario in ("P1 udp", "P1 udp+edns", "P2 udp+churn", "P3 tcp", "P4 udp @scale"):
        assert f"| {scenario} | dnsreg |" in out
    assert "| P1 udp | dnsmasq |" in out
    assert "| P1 udp | nsd |" in out
    assert "P4 registrations/s" in out
    assert "P5 ack→visible p50/p99" in out


def test_health_benchmark_quick_runs() -> None:
    assert "p99" in _run("bench.health")


def test_watch_benchmark_quick_runs() -> None:
    assert "p99" in _run("bench.watch")
