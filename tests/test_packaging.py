"""What an operator deploys: the wheel, and the systemd units in contrib/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"


def verify_unit(tmp_path: Path, name: str, unit_file: str) -> subprocess.CompletedProcess[str]:
    # `verify` insists that ExecStart's program exists: point it at this checkout's
    # dnsreg instead of the /usr/local/bin one a real install puts there.
    text = (UNITS / unit_file).read_text()
    text = text.replace("/usr/local/bin/dnsreg", str(Path(sys.executable).parent / "dnsreg"))
    (tmp_path / name).write_text(text)
    return subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package systemd)",
)
@pytest.mark.parametrize(
    ("name", "unit_file"),
    [("dnsreg.service", "dnsreg.service"), ("dnsreg@web.service", "dnsreg@.service")],
)
def test_systemd_units_verify_clean(tmp_path: Path, name: str, unit_file: str) -> None:
    result = verify_unit(tmp_path, name, unit_file)
    # An unknown or misspelt key is only a warning (exit 0): clean means silent too.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_unit_keeps_the_privileges_it_needs_and_no_more() -> None:
    text = (UNITS / "dnsreg.service").read_text()
    for line in (
        "DynamicUser=yes",
        "StateDirectory=dnsreg",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in text.splitlines(), line
    assert "LimitNOFILE=65536" in text


def test_wheel_builds_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("dnsreg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(metadata).decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "License-Expression: MIT" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "dnsreg/py.typed" in names
    # The dashboard ships as package data (served from the installed package, offline).
    assert {f"dnsreg/http/ui/{f}" for f in ("index.html", "app.js", "app.css")} <= set(names)
    assert "dnsreg = dnsreg.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(target))
    code = "import dnsreg, dnsreg.cli; print(dnsreg.__file__); dnsreg.cli.main(['--version'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.splitlines()[0].startswith(str(target)), out.stdout
    assert "dnsreg 0.1.0" in out.stdout + out.stderr
