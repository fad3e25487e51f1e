"""``dnsreg acl``, SIGHUP reload of tokens and the ACL-less safe default, via real processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dnsreg.config import load_config
from dnsreg.core.acl import load_acl
from dnsreg.core.errors import ConfigError
from tests.helpers import Process, spawn_server, wait_until

BODY = json.dumps({"address": "10.0.0.7", "port": 80}).encode()


def dnsreg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dnsreg", *args],
        capture_output=True, text=True, timeout=30, cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


def add(acl: Path, name: str, *flags: str) -> str:
    result = dnsreg("acl", "add", name, *flags, "--file", str(acl))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[1]


def http(base: str, method: str, path: str, secret: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = BODY if method == "PUT" else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_acl_add_prints_a_secret_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    result = dnsreg("acl", "add", "web-deployer", "--services", "web", "--services", "web-*",
                    "--file", str(acl))  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "web-deployer" in lines[0]
    secret = lines[1]
    assert len(secret) >= 43  # token_urlsafe(32): 256 bits
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    assert secret not in acl.read_text()
    principal = load_acl(acl).lookup(secret)
    assert principal is not None
    assert (principal.services, sorted(principal.rights)) == (("web", "web-*"), ["write"])
    other = add(acl, "ops", "--services", "*", "--operator")
    reader = add(acl, "dash", "--services", "*", "--read", "--transfer")
    assert len({secret, other, reader}) == 3
    assert load_acl(acl).lookup(other).is_operator  # type: ignore[union-attr]
    listing = dnsreg("acl", "list", "--file", str(acl))
    assert listing.stdout.splitlines() == [
        "web-deployer\tservices=web,web-*\trights=write",
        "ops\tservices=*\trights=operator",
        "dash\tservices=*\trights=read,transfer",
    ]
    assert all(s not in listing.stdout for s in (secret, other, reader))
    before = acl.read_text()
    for args, says in [
        (["web-deployer", "--services", "x"], "a token named 'web-deployer' exists already"),
        (["bad name", "--services", "x"], "name must be"),
        (["x", "--services", "Web Site"], "service glob"),
    ]:
        refused = dnsreg("acl", "add", *args, "--file", str(acl))
        assert (refused.returncode, refused.stdout) == (2, "")
        assert says in refused.stderr
    assert acl.read_text() == before
    assert dnsreg("acl", "add", "x", "--services", "a", "--operator", "--read").returncode == 2


def test_a_broken_acl_file_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    acl = tmp_path / "acl.toml"
    acl.write_text('[[tokens]]\nname = "a"\nsha256 = "zz"\nservices = ["*"]\nrights = ["write"]\n')
    result = dnsreg("serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
                    "--acl-file", str(acl), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dnsreg: acl file {acl}: tokens[0] ('a'): sha256 must be 64 hex digits"
    ]
    assert not (tmp_path / ".dnsreg").exists()  # refused before the store opened


def test_no_acl_file_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    result = dnsreg("serve", "--dns", "127.0.0.1:0", "--http", "0.0.0.0:0", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "refusing to serve the HTTP API on 0.0.0.0 without an ACL file" in line
    assert "dnsreg acl add" in line
    assert "--insecure-open-api" in line


def test_insecure_open_api_starts_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    proc = spawn_server(tmp_path, "--http", "0.0.0.0:0", "--insecure-open-api")
    try:
        assert "WARNING dnsreg: no ACL file and --insecure-open-api" in proc.log_text()
        status, body = http(proc.base, "GET", "/v1/status")
        assert (status, body["auth"]) == (200, "open-insecure")
        assert http(proc.base, "PUT", "/v1/services/web/instances/a")[0] == 201
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=10)


def test_sighup_reloads_tokens_and_a_broken_file_keeps_them(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    acl = tmp_path / "acl.toml"
    old = add(acl, "old", "--services", "web")
    proc: Process = spawn_server(tmp_path, "--acl-file", str(acl))
    try:
        assert http(proc.base, "PUT", "/v1/services/web/instances/a", old)[0] == 201
        acl.unlink()
        new = add(acl, "new", "--services", "web")
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "acl reloaded" in proc.log_text())
        assert http(proc.base, "PUT", "/v1/services/web/instances/b", new)[0] == 201
        status, body = http(proc.base, "PUT", "/v1/services/web/instances/c", old)
        assert (status, body["detail"]) == (401, {"missing": "token"})
        # A broken file: the server says why and keeps the tokens it had.
        acl.write_text(acl.read_text() + '\n[[tokens]]\nname = "x"\n')
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "acl reload failed" in proc.log_text())
        line = next(x for x in proc.log_text().splitlines() if "acl reload failed" in x)
        assert f"acl file {acl}: tokens[1] ('x'): missing sha256, services, rights" in line
        assert http(proc.base, "PUT", "/v1/services/web/instances/d", new)[0] == 201
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=10)


def test_acl_settings_come_from_flags_env_and_file(tmp_path: Path) -> None:
    config = load_config({}, env={"DNSREG_ACL_FILE": "/etc/dnsreg/acl.toml",
                                  "DNSREG_ACL_READS": "token",
                                  "DNSREG_INSECURE_OPEN_API": "true"})  # fmt: skip
    assert (config.acl_file, config.acl_reads, config.insecure_open_api) == (
        Path("/etc/dnsreg/acl.toml"), "token", True,
    )  # fmt: skip
    file = tmp_path / "dnsreg.toml"
    file.write_text('acl_file = "a.toml"\nacl_reads = "open"\n')
    config = load_config({"config": str(file), "acl_file": "b.toml"}, env={})
    assert (config.acl_file, config.acl_reads, config.insecure_open_api) == (
        Path("b.toml"), "open", False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="acl_reads"):
        load_config({"acl_reads": "closed"}, env={})
    with pytest.raises(ConfigError, match="insecure_open_api"):
        load_config({}, env={"DNSREG_INSECURE_OPEN_API": "maybe"})


def test_closed_reads_without_an_acl_file_refuse_to_start(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    result = dnsreg("serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
                    "--acl-reads", "token", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert 'acl_reads = "token" needs an acl_file' in result.stderr


def test_concurrent_adds_of_one_name_leave_one_token(tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    argv = [sys.executable, "-m", "dnsreg", "acl", "add", "same", "--services", "web"]
    quiet = subprocess.DEVNULL
    procs = [
        subprocess.Popen([*argv, "--file", str(acl)], stdout=quiet, stderr=quiet) for _ in range(4)
    ]
    assert sorted(p.wait(timeout=30) for p in procs) == [0, 2, 2, 2]
    assert load_acl(acl).names() == ["same"]
