"""``dnsreg run``: drain before forwarding SIGTERM, and register only a port its command holds."""

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
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from dnsreg.client.run import Notices
from tests.helpers import FakeClock, Process, server_process, wait_until

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with server_process(tmp_path_factory.mktemp("rundrain")) as proc:
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


def addresses(server: Process, name: str) -> list[str]:
    reply = dns.query.udp(
        dns.message.make_query(name, "A"), "127.0.0.1", port=server.dns_port, timeout=3
    )
    return [r.address for rrset in reply.answer for r in rrset]


def start(server: Process, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "run", "--api", f"127.0.0.1:{server.http_port}", *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM: dnsreg run passes it on to the command (in its own session), which ends."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=10)


# Listens on argv[1]; on SIGTERM asks DNS (argv[2]) for argv[3] and prints what it got
# and when (CLOCK_MONOTONIC is one clock for every process on the machine).
CHILD = textwrap.dedent(
    """
    import signal, socket, sys, time
    import dns.message, dns.query
    port, dns_port, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    def on_term(*_):
        reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port,
                              timeout=3)
        got = [r.address for rrset in reply.answer for r in rrset]
        print("SIGTERM", time.monotonic(), ",".join(got) or "-", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print("listening", flush=True)
    while True:
        signal.pause()
    """
)


def test_sigterm_withdraws_from_dns_before_the_command_hears_it(server: Process) -> None:
    port = free_port()
    name = "drainee.service.local"
    proc = start(
        server, "--name", "drainee", "--port", str(port), "--address", "127.0.0.1",
        "--dns-ttl", "1", "--", sys.executable, "-c", CHILD, str(port), str(server.dns_port),
        name,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        wait_until(lambda: addresses(server, name) == ["127.0.0.1"], 10)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        word, at, seen = proc.stdout.readline().split()
        out, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert word == "SIGTERM"
    assert seen == "-"  # DNS no longer answered with it when the command got the signal
    assert float(at) - sent >= 0.95  # it waited the instance's dns_ttl (1 s) first
    assert "drainee-" not in out
    assert "withdrawn from DNS; waiting 1s for resolver caches before forwarding SIGTERM" in err
    assert proc.returncode == 0, err
    assert instances(server, "drainee") == []  # deregistered once the command exited


def test_drain_wait_0_forwards_at_once(server: Process) -> None:
    port = free_port()
    name = "quick.service.local"
    proc = start(
        server, "--name", "quick", "--port", str(port), "--address", "127.0.0.1",
        "--dns-ttl", "30", "--drain-wait", "0", "--", sys.executable, "-c", CHILD, str(port),
        str(server.dns_port), name,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        wait_until(lambda: addresses(server, name) == ["127.0.0.1"], 10)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        word, at, _seen = proc.stdout.readline().split()
        proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert word == "SIGTERM"
    assert float(at) - sent < 5  # not the 30 s dns_ttl


def test_port_held_by_another_process_is_never_registered(server: Process) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    proc = start(
        server, "--name", "squat", "--port", str(port), "--address", "127.0.0.1", "--",
        sys.executable, "-c", "import time; time.sleep(60)",
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while "held by" not in line:
            line = proc.stderr.readline()
        assert f"port {port} is held by another process, pid {os.getpid()} (" in line
        assert "not registering" in line
        assert instances(server, "squat") == []
    finally:
        squatter.close()
        stop(proc)
    assert instances(server, "squat") == []


def test_a_descendant_holding_the_port_counts(server: Process) -> None:
    port = free_port()
    # sh starts the server as a grandchild of dnsreg run (and waits for it).
    command = (
        f"{sys.executable} -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 & "
        'trap "kill $!" TERM; wait'
    )
    proc = start(
        server, "--name", "grand", "--port", str(port), "--address", "127.0.0.1",
        "--drain-wait", "0", "--", "sh", "-c", command,
    )  # fmt: skip
    try:
        wait_until(lambda: instances(server, "grand") != [], 15)
    finally:
        stop(proc)


def test_says_it_is_still_waiting_for_a_port_nobody_listens_on(server: Process) -> None:
    port, other = free_port(), free_port()
    proc = start(
        server, "--name", "late", "--port", str(port), "--",
        sys.executable, "-m", "http.server", str(other), "--bind", "127.0.0.1",
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        started = time.monotonic()
        line = proc.stderr.readline()
        while "still waiting" not in line:
            line = proc.stderr.readline()
        assert f"still waiting for port {port} to be listened on by the command" in line
        assert time.monotonic() - started >= 2.5
        assert instances(server, "late") == []
    finally:
        stop(proc)


def test_waiting_notices_repeat_at_intervals() -> None:
    clock = FakeClock(start=0.0)
    notices = Notices(clock(), first=3.0, every=10.0)
    said = []
    for _ in range(60):  # 30 s in 0.5 s steps
        if notices.due(clock()):
            said.append(clock.now)
        clock.advance(0.5)
    assert said == [3.0, 13.0, 23.0]
