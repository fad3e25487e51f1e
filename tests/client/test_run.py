"""``dnsreg run``: an unmodified program becomes discoverable while it lives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from dnsreg.client.run import exit_status
from tests.helpers import Process, server_process, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with server_process(tmp_path_factory.mktemp("run")) as proc:
        yield proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def instances(server: Process, service: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{server.base}/v1/services/{service}", timeout=5) as resp:
        found: list[dict[str, Any]] = json.loads(resp.read())["instances"]
        return found


def srv(server: Process, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "SRV")
    return dns.query.udp(query, "127.0.0.1", port=server.dns_port, timeout=3)


def start(server: Process, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "run", "--api", server.base, *args],
        stdin=stdin,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def test_http_server_is_resolvable_while_it_runs_and_gone_after(server: Process) -> None:
    port = free_port()
    proc = start(
        server, "--name", "files", "--port", str(port), "--id", "files-1", "--address",
        "127.0.0.1", "--", sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
    )  # fmt: skip
    try:
        wait_until(lambda: instances(server, "files") != [], 15)
        reply = srv(server, "files.service.local")
        (answer,) = reply.answer
        assert [r.to_text() for r in answer] == [f"0 1 {port} files-1.files.service.local."]
        glue = [r.to_text() for rrset in reply.additional for r in rrset]
        assert glue == ["127.0.0.1"]
        # What DNS hands out really serves: registration waited for the port.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)  # forwarded: http.server dies of it
        _out, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "forwarding SIGTERM" in err
    assert instances(server, "files") == []
    assert srv(server, "files.service.local").rcode() == dns.rcode.NXDOMAIN


# A program that listens, and exits with code 3 when its stdin closes. On SIGINT
# it prints a count and exits 0 half a second later: a duplicate SIGINT in that
# window prints "SIGINT 2".
CHILD = textwrap.dedent(
    """
    import signal, socket, sys, time
    port = int(sys.argv[1])
    hits = []
    def on_int(signum, frame):
        hits.append(signum)
        print("SIGINT", len(hits), flush=True)
        if len(hits) == 1:
            time.sleep(0.5)
            sys.exit(0)
    signal.signal(signal.SIGINT, on_int)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sys.stdin.readline().strip() != "listen":
        sys.exit(4)
    s.bind(("127.0.0.1", port))
    s.listen()
    print("listening", flush=True)
    sys.stdin.read()
    sys.exit(3)
    """
)


def test_registers_only_once_listening_and_exits_with_the_command_status(
    server: Process,
) -> None:
    port = free_port()
    proc = start(
        server, "--name", "kid", "--port", str(port), "--id", "kid-1", "--address", "127.0.0.1",
        "--ttl", "1s", "--tag", "canary", "--meta", "team=x", "--",
        sys.executable, "-c", CHILD, str(port),
        stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert "started" in proc.stderr.readline()
        # Proving an absence takes a pause: without the readiness wait, registration
        # follows the start within milliseconds.
        time.sleep(0.5)
        assert instances(server, "kid") == []  # not listening yet: not in DNS
        proc.stdin.write("listen\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "listening"
        wait_until(lambda: instances(server, "kid") != [], 10)
        (instance,) = instances(server, "kid")
        assert (instance["id"], instance["port"], instance["tags"]) == ("kid-1", port, ["canary"])
        assert instance["meta"] == {"team": "x"}
        # communicate() closes stdin: the program ends by itself, with status 3.
        _out, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 3, err
    assert instances(server, "kid") == []


def test_ctrl_c_reaches_the_command_exactly_once(server: Process) -> None:
    port = free_port()
    proc = start(
        server, "--name", "intr", "--port", str(port), "--address", "127.0.0.1", "--",
        sys.executable, "-c", CHILD, str(port),
        stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("listen\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "listening"
        wait_until(lambda: instances(server, "intr") != [], 10)
        # Ctrl-C at a terminal: SIGINT to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        # Read the child's answer before communicate() closes its stdin (EOF would
        # make it exit by itself, racing the signal).
        assert proc.stdout.readline().strip() == "SIGINT 1"
        out, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert out == ""  # no "SIGINT 2": the terminal's signal and ours did not both arrive
    assert instances(server, "intr") == []


def test_command_that_never_listens_is_never_registered(server: Process) -> None:
    proc = start(
        server, "--name", "quitter", "--port", str(free_port()), "--",
        sys.executable, "-c", "import sys; sys.exit(5)",
    )  # fmt: skip
    _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 5
    assert "never registered" in err
    assert instances(server, "quitter") == []


def test_usage_errors(server: Process) -> None:
    proc = start(server, "--name", "x", "--port", "80")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert "give the command after `--`" in err
    proc = start(server, "--name", "x", "--port", "80", "--", "/nonexistent/program")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert "cannot start /nonexistent/program" in err


@pytest.mark.parametrize(("returncode", "status"), [(0, 0), (3, 3), (-15, 143), (-9, 137)])
def test_exit_status_follows_the_shell(returncode: int, status: int) -> None:
    assert exit_status(returncode) == status
