"""Operator commands of the real ``dnsreg`` entry point against real server processes:
status, maintenance, heartbeat, drain, show's check output, --api without a scheme,
the two "wrong server" errors, watch's reconnect notices, --help and completion."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from dnsreg.client.endpoint import api_url
from dnsreg.core.errors import InvalidInput
from tests.helpers import Process, server_process, spawn_server, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with server_process(tmp_path_factory.mktemp("ops")) as proc:
        yield proc


def dnsreg(*args: str, api: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DNSREG_API", None)
    extra = ["--api", api] if api is not None else []
    return subprocess.run(
        [sys.executable, "-m", "dnsreg", *args, *extra],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def hostport(server: Process) -> str:
    return f"127.0.0.1:{server.http_port}"  # no scheme: http:// is assumed


def register(server: Process, service: str, id: str, *flags: str) -> None:
    result = dnsreg(
        "register", service, "--port", "8080", "--id", id, "--address", "10.0.0.5", *flags,
        api=hostport(server),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def api(server: Process, path: str) -> Any:
    with urllib.request.urlopen(server.base + path, timeout=5) as resp:
        return json.loads(resp.read())


def addresses(server: Process, name: str) -> list[str]:
    reply = dns.query.udp(
        dns.message.make_query(name, "A"), "127.0.0.1", port=server.dns_port, timeout=3
    )
    return sorted(r.address for rrset in reply.answer for r in rrset if r.rdtype == dns.rdatatype.A)


# ------------------------------------------------------------------------ status / --api
def test_status_with_a_bare_host_port(server: Process) -> None:
    result = dnsreg("status", api=hostport(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{server.base}: dnsreg ")
    assert ", ok; " in result.stdout
    assert "store sqlite" in result.stdout
    as_json = json.loads(dnsreg("status", "--json", api=hostport(server)).stdout)
    assert as_json["status"] == "ok"


def test_api_urls() -> None:
    assert api_url("localhost:8500") == "http://localhost:8500"
    assert api_url("localhost:8500", tls=True) == "https://localhost:8500"  # --ca / --cert
    assert api_url("http://h:1/", tls=True) == "http://h:1"  # an explicit scheme wins
    assert api_url("[::1]:8500") == "http://[::1]:8500"
    for bad in ("", "ftp://h:1", "h:port", "http://"):
        with pytest.raises(InvalidInput, match="api"):
            api_url(bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_no_server_there_is_one_clear_line() -> None:
    port = free_port()
    result = dnsreg("status", api=f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert (
        result.stderr
        == f"dnsreg: no dnsreg server at http://127.0.0.1:{port} (connection refused)\n"
    )


class _Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/v1/status"):
            body, ctype, status = b'{"hello": "world"}', "application/json", 200
        else:
            body, ctype, status = b"<html>nope</html>", "text/html", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def foreign() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_not_a_dnsreg_server(foreign: str, server: Process) -> None:
    html = dnsreg("ls", api=foreign)
    assert html.returncode == 1
    assert html.stderr == (
        f"dnsreg: not a dnsreg server at http://{foreign}: GET /v1/services answered "
        "HTTP 404 (text/html), not dnsreg's JSON; check --api\n"
    )
    shape = dnsreg("status", api=foreign)
    assert shape.returncode == 1
    assert "not a dnsreg server" in shape.stderr
    assert "without status, version" in shape.stderr
    # Our own server under a wrong base path: its JSON 404 is not "Not Found" alone.
    wrong_base = dnsreg("status", api=server.base + "/ui")
    assert wrong_base.returncode == 1
    assert "not a dnsreg server at " in wrong_base.stderr
    assert "/v1/status" in wrong_base.stderr


# ------------------------------------------------------- show / maintenance / heartbeat
def test_show_prints_check_output_and_exits_1_for_an_unknown_service(server: Process) -> None:
    register(server, "chk", "chk-1", "--check-tcp", "127.0.0.1:1", "--check-interval", "200ms")
    wait_until(lambda: api(server, "/v1/services/chk")["instances"][0]["check_status"][0]
               ["last_run"] is not None)  # fmt: skip
    result = dnsreg("show", "chk", api=hostport(server))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "HEALTH", "SERVED", "LEASE", "TAGS", "META"]
    assert lines[1].split()[:4] == ["chk-1", "10.0.0.5:8080", "critical", "no"]
    assert lines[3].split() == ["ID", "CHECK", "STATE", "OUTPUT"]
    assert lines[4].startswith("chk-1  tcp 127.0.0.1:1  critical  ")
    assert "refused" in lines[4].lower()
    missing = dnsreg("show", "nosuch", api=hostport(server))
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == "dnsreg: no instances of nosuch\n"


def test_maintenance_on_and_off_changes_dns(server: Process) -> None:
    register(server, "mnt", "mnt-1", "--ttl", "0")
    assert addresses(server, "mnt.service.local") == ["10.0.0.5"]
    on = dnsreg("maintenance", "on", "mnt", "mnt-1", "--reason", "disk swap", api=hostport(server))
    assert on.returncode == 0, on.stderr
    assert on.stdout == "mnt/mnt-1: in maintenance (disk swap); DNS no longer serves it\n"
    assert addresses(server, "mnt.service.local") == []
    off = dnsreg("maintenance", "off", "mnt", "mnt-1", api=hostport(server))
    assert off.stdout == "mnt/mnt-1: out of maintenance; DNS serves it\n"
    assert addresses(server, "mnt.service.local") == ["10.0.0.5"]
    unknown = dnsreg("maintenance", "on", "mnt", "nope", api=hostport(server))
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("dnsreg: ")
    assert "nope" in unknown.stderr
    usage = dnsreg("maintenance", "maybe", "mnt", "mnt-1", api=hostport(server))
    assert usage.returncode == 2


def test_heartbeat_renews_the_lease(server: Process) -> None:
    register(server, "hb", "hb-1", "--ttl", "20s")
    result = dnsreg("heartbeat", "hb", "hb-1", api=hostport(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout in ("hb/hb-1: renewed; lease runs out in 20s\n",
                             "hb/hb-1: renewed; lease runs out in 19s\n")  # fmt: skip
    gone = dnsreg("heartbeat", "hb", "nope", api=hostport(server))
    assert gone.returncode == 1
    assert "nope" in gone.stderr


# ------------------------------------------------------------------------------- drain
def test_drain_withdraws_at_once_waits_the_dns_ttl_then_deregisters(server: Process) -> None:
    register(server, "dr", "dr-1", "--ttl", "0", "--dns-ttl", "1")
    assert addresses(server, "dr.service.local") == ["10.0.0.5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "drain", "dr", "dr-1", "--deregister",
         "--api", hostport(server)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    head = proc.stdout.read(len("dr/dr-1: withdrawn from DNS"))
    withdrawn = time.monotonic()
    assert head == "dr/dr-1: withdrawn from DNS"
    # Out of DNS before the wait starts, but still registered (in maintenance).
    assert addresses(server, "dr.service.local") == []
    out = proc.stdout.read()  # to EOF: the command has exited
    waited = time.monotonic() - withdrawn
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert err == ""
    assert out == "; waiting 1s for resolver caches\N{HORIZONTAL ELLIPSIS} done; deregistered\n"
    assert 0.9 <= waited < 5, waited
    assert api(server, "/v1/services/dr")["instances"] == []


def test_drain_without_deregister_leaves_it_in_maintenance(server: Process) -> None:
    register(server, "dk", "dk-1", "--ttl", "0", "--dns-ttl", "30")
    result = dnsreg("drain", "dk", "dk-1", "--wait", "0", api=hostport(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "dk/dk-1: withdrawn from DNS\n"
    (i,) = api(server, "/v1/services/dk")["instances"]
    assert i["maintenance"] == {"enabled": True, "reason": "draining"}
    assert not i["served"]


def test_drain_bad_input_changes_nothing(server: Process) -> None:
    register(server, "db", "db-1", "--ttl", "0")
    bad_wait = dnsreg("drain", "db", "db-1", "--wait", "soon", api=hostport(server))
    assert bad_wait.returncode == 1
    assert "wait" in bad_wait.stderr
    long_reason = dnsreg("drain", "db", "db-1", "--reason", "x" * 300, api=hostport(server))
    assert long_reason.returncode == 1
    assert "reason" in long_reason.stderr
    (i,) = api(server, "/v1/services/db")["instances"]
    assert i["served"]
    assert not i["maintenance"]["enabled"]
    unknown = dnsreg("drain", "db", "nope", api=hostport(server))
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr


def test_drain_is_a_write_that_needs_a_token(tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    made = dnsreg("acl", "add", "deployer", "--services", "web", "--file", str(acl))
    secret = made.stdout.splitlines()[1]
    (tmp_path / "zones").mkdir()
    proc = spawn_server(tmp_path, "--acl-file", str(acl))
    try:
        base = f"127.0.0.1:{proc.http_port}"
        reg = dnsreg("register", "web", "--port", "80", "--id", "w1", "--address", "10.0.0.5",
                     "--token", secret, api=base)  # fmt: skip
        assert reg.returncode == 0, reg.stderr
        anonymous = dnsreg("drain", "web", "w1", "--wait", "0", api=base)
        assert anonymous.returncode == 1
        assert "token" in anonymous.stderr.lower()
        allowed = dnsreg("drain", "web", "w1", "--wait", "0", "--token", secret, api=base)
        assert allowed.returncode == 0, allowed.stderr
        assert "by token deployer" in proc.log_text()
        assert "drain web/w1" in proc.log_text()
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=10)


# ------------------------------------------------------------------------------- watch
def test_watch_says_when_it_lost_the_server_and_when_it_is_back(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    first = spawn_server(tmp_path)
    port = first.http_port
    watch = subprocess.Popen(
        [sys.executable, "-m", "dnsreg", "watch", "--api", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    second = None
    try:
        assert watch.stderr is not None
        assert watch.stdout is not None
        wait_until(lambda: api(first, "/v1/status")["events"]["streams"] == 1, 10)
        first.proc.terminate()
        first.proc.wait(timeout=10)
        lost = watch.stderr.readline()
        assert lost.startswith("dnsreg: disconnected: ")
        assert "reconnecting" in lost
        second = spawn_server(tmp_path, "--http", f"127.0.0.1:{port}")
        back = watch.stderr.readline()
        while back.startswith("dnsreg: disconnected"):  # repeated while the server was down
            back = watch.stderr.readline()
        assert back.startswith(f"dnsreg: reconnected to http://127.0.0.1:{port}")
        register(second, "wat", "wat-1")
        assert watch.stdout.readline().split()[1:3] == ["registered", "wat/wat-1"]
    finally:
        watch.terminate()
        watch.communicate(timeout=10)
        for proc in (first, second):
            if proc is not None and proc.proc.poll() is None:
                proc.proc.terminate()
                proc.proc.wait(timeout=10)


# ------------------------------------------------------------------- help / completion
def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    from dnsreg import cli

    captured: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_args

    def grab(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        captured.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab  # type: ignore[assignment,method-assign]
    try:
        with pytest.raises(SystemExit):
            cli.main(["status"])
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
    (top,) = captured
    todo = [("dnsreg", top)]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {n}", p) for n, p in action.choices.items())


def test_every_flag_has_help() -> None:
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in _parsers()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_help_states_the_true_lease_defaults() -> None:
    run_help = subprocess.run(
        [sys.executable, "-m", "dnsreg", "run", "--help"], capture_output=True, text=True,
        env=dict(os.environ, COLUMNS="200"),
    ).stdout  # fmt: skip
    assert "0 for none (default 10s)" in run_help
    assert "--drain-wait DURATION" in run_help
    register_help = subprocess.run(
        [sys.executable, "-m", "dnsreg", "register", "--help"], capture_output=True, text=True,
        env=dict(os.environ, COLUMNS="200"),
    ).stdout  # fmt: skip
    assert "0 for none (server default 30s)" in register_help
    from dnsreg.client.registration import DEFAULT_SERVER_TTL
    from dnsreg.core.model import DEFAULT_LEASE_TTL

    assert DEFAULT_SERVER_TTL == DEFAULT_LEASE_TTL == 30.0


def complete(line: str, tmp_path: Path) -> list[str]:
    """What argcomplete answers the shell hook for ``line`` (the hook's protocol)."""
    out = tmp_path / "completions"
    env = dict(
        os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\v", COMP_LINE=line,
        COMP_POINT=str(len(line)), _ARGCOMPLETE_STDOUT_FILENAME=str(out),
    )  # fmt: skip
    subprocess.run([sys.executable, "-m", "dnsreg"], env=env, timeout=30, check=True)
    return out.read_text().split("\v")


def test_completion_of_commands_and_flags(tmp_path: Path) -> None:
    assert "maintenance " in complete("dnsreg m", tmp_path)
    assert "--drain-wait " in complete("dnsreg run --dr", tmp_path)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_with_the_printed_script() -> None:
    # The real round trip: bash runs the hook, the hook runs dnsreg, bash gets the words.
    script = (
        'eval "$(dnsreg completion bash)"; COMP_WORDS=(dnsreg maintenance o); COMP_CWORD=2; '
        'COMP_LINE="dnsreg maintenance o"; COMP_POINT=${#COMP_LINE}; '
        '_python_argcomplete dnsreg; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PATH=path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["on", "off"]


def put(server: Process, path: str, body: bytes | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(server.base + path, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def test_drain_route_answers_at_once_with_the_wait(server: Process) -> None:
    register(server, "hd", "hd-1", "--ttl", "0", "--dns-ttl", "7")
    path = "/v1/services/hd/instances/hd-1/drain"
    status, body = put(server, path, b'{"bogus": 1}')
    assert status == 400
    assert body["detail"]["field"] == "bogus"
    assert addresses(server, "hd.service.local") == ["10.0.0.5"]  # nothing changed
    before = time.time()
    status, body = put(server, path, b'{"reason": "deploy 42"}')
    assert status == 200, body
    assert body["wait"] == 7
    assert body["was_served"] is True
    assert before + 7 <= body["drained_at"] <= time.time() + 7
    assert body["instance"]["maintenance"] == {"enabled": True, "reason": "deploy 42"}
    assert addresses(server, "hd.service.local") == []
    status, body = put(server, "/v1/services/hd/instances/nope/drain", None)
    assert status == 404
    assert "nope" in body["error"]


def test_https_to_a_plain_http_server_says_so(server: Process) -> None:
    result = dnsreg("status", api=f"https://127.0.0.1:{server.http_port}")
    assert result.returncode == 1
    assert result.stderr == (
        f"dnsreg: cannot reach https://127.0.0.1:{server.http_port}: the server does not "
        f"speak TLS there (is it plain HTTP? try --api http://127.0.0.1:{server.http_port})\n"
    )
