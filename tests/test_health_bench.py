"""The health benchmark's harness runs end to end (``--quick``: small and short)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_health_bench_runs_and_reports() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.health", "--quick", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table, _, raw = done.stdout.partition("\n{")
    result = json.loads("{" + raw)
    assert "server CPU, share of one core" in table
    assert result["checks_per_s"] > 0.8 * result["expected_checks_per_s"]
    assert 0 < result["cpu_share_of_one_core"] < 1.5
    for mode in ("http 500", "hang past timeout"):
        detection = result["detection"][mode]
        assert detection["n"] == result["settings"]["victims"]
        # Every failing instance left DNS, and within the bound (plus a loaded machine's slack).
        assert 0 < detection["max_s"] <= result["goal_s"] + 0.5
