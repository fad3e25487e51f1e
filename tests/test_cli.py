"""The client commands of the real ``dnsreg`` entry point, against a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Process, server_process, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with server_process(tmp_path_factory.mktemp("cli")) as proc:
        yield proc


def env_for(server: Process) -> dict[str, str]:
    return dict(os.environ, DNSREG_API=server.base, PYTHONUNBUFFERED="1")


def dnsreg(server: Process, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dnsreg", *args],
        env=env_for(server),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def api(server: Process, path: str) -> Any:
    """Read the server's state directly over HTTP (not through the CLI under test)."""
    import urllib.request

    with urllib.request.urlopen(server.base + path, timeout=5) as resp:
        return json.loads(resp.read())


def ids(server: Process, service: str) -> list[str]:
    return [i["id"] for i in api(server, f"/v1/services/{service}")["instances"]]


def test_register_ls_show_deregister(server: Process) -> None:
    out = dnsreg(
        server, "register", "web", "--port", "8080", "--id", "web-1", "--address", "10.0.0.5",
        "--tag", "primary", "--meta", "version=2", "--ttl", "0",
    ).stdout  # fmt: skip
    assert out.startswith("registered web/web-1 at 10.0.0.5:8080 (revision ")
    assert out.rstrip().endswith("no lease)")
    dnsreg(server, "register", "web", "--port", "8081", "--id", "web-2", "--address", "10.0.0.6")
    dnsreg(server, "register", "webdb", "--port", "5432", "--address", "10.0.0.7")

    lines = dnsreg(server, "ls", "web").stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "INSTANCES", "SERVED", "PASSING", "WARNING",
                                "CRITICAL", "MAINT"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["web"] == ["2", "2", "2", "0", "0", "0"]
    assert rows["webdb"][0] == "1"

    shown = dnsreg(server, "show", "web").stdout.splitlines()
    assert shown[0].split()[:3] == ["ID", "ADDRESS", "HEALTH"]
    web1 = shown[1].split()
    assert web1[:5] == ["web-1", "10.0.0.5:8080", "passing", "yes", "none"]
    assert web1[5:] == ["primary", "version=2"]

    listing = json.loads(dnsreg(server, "show", "web", "--json").stdout)
    assert [i["id"] for i in listing["instances"]] == ["web-1", "web-2"]
    assert listing["revision"] >= 3
    assert "webdb" in json.loads(dnsreg(server, "ls", "--json").stdout)["services"]

    out = dnsreg(server, "deregister", "web", "web-2").stdout
    assert out.startswith("deregistered web/web-2 (revision ")
    assert ids(server, "web") == ["web-1"]


def test_default_id_and_checks_and_api_flag(server: Process) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dnsreg", "register", "chk", "--port", "9000", "--address",
         "10.0.0.9", "--check-tcp", "10.0.0.9:9", "--check-interval", "5s", "--api",
         server.base],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "DNSREG_API"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (instance,) = api(server, "/v1/services/chk")["instances"]
    assert instance["id"].endswith("-9000")
    assert instance["checks"][0]["tcp"] == "10.0.0.9:9"
    assert instance["checks"][0]["interval"] == 5.0


def test_errors_exit_1_with_a_message(server: Process) -> None:
    result = dnsreg(server, "deregister", "web", "nobody", ok=False)
    assert result.returncode == 1
    assert "is not registered" in result.stderr
    result = dnsreg(server, "register", "web_1", "--port", "80", ok=False)
    assert result.returncode == 1
    assert "service" in result.stderr
    result = dnsreg(server, "register", "web", "--port", "80", "--address", "nope", ok=False)
    assert (result.returncode, "address") == (1, result.stderr.split(":")[1].strip())
    result = dnsreg(server, "ls", "--api", "http://127.0.0.1:1", ok=False)
    assert result.returncode == 1
    assert "no dnsreg server at http://127.0.0.1:1 (connection refused)" in result.stderr
    result = dnsreg(server, "register", "web", ok=False)  # --port missing: a usage error
    assert result.returncode == 2


def test_register_keepalive_holds_the_lease_and_deregisters_on_ctrl_c(server: Process) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "register", "ka", "--port", "7000", "--id", "ka-1",
         "--address", "10.0.0.1", "--ttl", "1s", "--keepalive"],
        env=env_for(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("registered ka/ka-1 at 10.0.0.1:7000"), first
        time.sleep(2.5)  # 2.5 lease periods: only heartbeats can keep it registered
        assert ids(server, "ka") == ["ka-1"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "deregistered ka/ka-1" in out
    assert ids(server, "ka") == []


def test_register_keepalive_deregisters_on_sigterm(server: Process) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "register", "ka2", "--port", "7000", "--id", "ka-2",
         "--address", "10.0.0.1", "--keepalive"],
        env=env_for(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("registered ka2/ka-2")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert ids(server, "ka2") == []


def test_watch_prints_changes_as_they_happen(server: Process) -> None:
    plain = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "watch", "wat"],
        env=env_for(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    as_json = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "watch", "wat", "--json"],
        env=env_for(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Each watcher opens one event stream: wait until the server has both.
        wait_until(lambda: _streams(server) >= 2, 15)
        dnsreg(server, "register", "wat", "--port", "80", "--id", "w1", "--address", "10.0.0.3")
        dnsreg(server, "register", "other", "--port", "80", "--address", "10.0.0.3")
        dnsreg(server, "deregister", "wat", "w1")
        assert plain.stdout is not None
        assert as_json.stdout is not None
        line1, line2 = plain.stdout.readline().split(), plain.stdout.readline().split()
        assert line1[1:] == ["registered", "wat/w1", "10.0.0.3:80", "passing"]
        assert line2[1:] == ["deregistered", "wat/w1"]
        assert int(line2[0]) == int(line1[0]) + 2  # the unrelated change was not shown
        events = [json.loads(as_json.stdout.readline()) for _ in range(2)]
        assert [(e["kind"], e["id"]) for e in events] == [
            ("registered", "w1"),
            ("deregistered", "w1"),
        ]
        assert events[0]["instance"]["address"] == "10.0.0.3"
        assert events[1]["instance"] is None
    finally:
        for proc in (plain, as_json):
            proc.send_signal(signal.SIGINT)
    for proc in (plain, as_json):
        proc.communicate(timeout=10)
        assert proc.returncode == 0


def test_watch_into_a_closed_pipe_ends_quietly(server: Process) -> None:
    # `dnsreg watch | head -1`: once the reader is gone the watcher ends, without a traceback.
    wait_until(lambda: _streams(server) == 0, 15)  # earlier tests' watchers are gone
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "watch", "pipe"],
        env=env_for(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _streams(server) >= 1, 15)
        dnsreg(server, "register", "pipe", "--port", "80", "--id", "p1", "--address", "10.0.0.3")
        assert proc.stdout is not None
        assert "registered pipe/p1" in proc.stdout.readline()
        proc.stdout.close()  # as `head -1` exits
        for n in range(2, 6):  # the next lines hit the closed pipe
            dnsreg(server, "register", "pipe", "--port", "80", "--id", f"p{n}", "--address",
                   "10.0.0.3")  # fmt: skip
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 141, err
        assert "Traceback" not in err, err
        assert "BrokenPipe" not in err, err
    finally:
        proc.kill()
        proc.wait()


def _streams(server: Process) -> int:
    """Event streams the server has open right now (from /v1/status)."""
    return int(api(server, "/v1/status")["events"]["streams"])


def test_help_lists_the_client_commands(server: Process) -> None:
    out = dnsreg(server, "--help").stdout
    for command in ("register", "deregister", "ls", "show", "watch", "run", "registrar"):
        assert command in out


def test_module_entry_point_is_the_installed_one(tmp_path: Path) -> None:
    # `dnsreg` (console script) and `python -m dnsreg` are the same program.
    script = Path(sys.executable).parent / "dnsreg"
    result = subprocess.run(
        [str(script), "ls", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "PREFIX" in result.stdout or "prefix" in result.stdout


@pytest.mark.parametrize("which", ["dns", "http"])
def test_serve_on_a_taken_port_names_the_listener_and_exits_2(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:  # TCP: both listeners need it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"dns": "127.0.0.1:0", "http": "127.0.0.1:0", which: f"127.0.0.1:{port}"}
        result = subprocess.run(
            [sys.executable, "-m", "dnsreg", "serve", "--data-dir", str(tmp_path / "data"),
             "--zones", str(tmp_path), "--dns", ports["dns"], "--http", ports["http"]],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    what = which.upper()
    assert f"cannot listen for {what}: 127.0.0.1:{port} is already in use" in result.stderr
    assert f"--{which}" in result.stderr
    assert "Traceback" not in result.stderr
