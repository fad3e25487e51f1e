"""The three servers under test, each started on a free loopback port with the same records.

dnsreg gets its records through its HTTP API (the way users register);
dnsmasq gets an addn-hosts file and ``--srv-host`` lines; NSD gets a zone file.
"""

from __future__ import annotations

import abc
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ZONE = "service.local"


@dataclass(frozen=True)
class Instance:
    service: str
    id: str
    address: str
    port: int


def dataset(services: int, per_service: int) -> list[Instance]:
    out = []
    for s in range(services):
        for i in range(per_service):
            n = s * per_service + i
            out.append(
                Instance(f"svc{s}", f"i{i}", f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
                         8000 + i)
            )  # fmt: skip
    return out


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server(abc.ABC):
    name = "?"
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    expect_svc0 = True

    @abc.abstractmethod
    def start(self, work: Path, instances: list[Instance], core: int | None) -> None:
        """Start on a free port with ``instances`` loaded; return once it answers."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 15.0) -> None:
        import dns.message
        import dns.query

        deadline = time.monotonic() + timeout
        q = dns.message.make_query(
            f"svc0.{ZONE}" if self.expect_svc0 else ZONE, "A" if self.expect_svc0 else "SOA"
        )
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.2)
                if r.answer:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer svc0.{ZONE} in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Dnsreg(Server):
    name = "dnsreg"

    def __init__(self, python: str = sys.executable, extra: Sequence[str] = ()) -> None:
        self.python = python
        self.extra = list(extra)  # more `dnsreg serve` arguments (e.g. --config FILE)
        self.http_port = 0
        self.log: Path | None = None

    def start(self, work: Path, instances: list[Instance], core: int | None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "zones").mkdir(exist_ok=True)
        self.log = work / "dnsreg.log"
        cmd = [self.python, "-m", "dnsreg", "serve", "--dns", "127.0.0.1:0",
               "--http", "127.0.0.1:0", "--data-dir", str(work / "data"),
               *self.extra, "--zones", str(work / "zones"), "--log-level", "warning"]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The listen line is logged at info; ask for it explicitly.
        cmd[-1] = "info"
        self.proc = subprocess.Popen(
            pinned(cmd, core), stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env
        )
        pattern = re.compile(r"DNS on [^ ]+:(\d+) \(udp\+tcp\), HTTP on http://[^ ]+:(\d+)")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = pattern.search(self.log.read_text())
            if m:
                self.port, self.http_port = int(m.group(1)), int(m.group(2))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsreg exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        else:
            raise RuntimeError("dnsreg did not start")
        for inst in instances:
            self.register(inst, ttl=0)
        self.expect_svc0 = bool(instances)
        self.wait_ready()

    def register(self, inst: Instance, ttl: float = 0) -> dict[str, object]:
        body = json.dumps({"address": inst.address, "port": inst.port, "ttl": ttl}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/v1/services/{inst.service}/instances/{inst.id}",
            data=body, method="PUT", headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, object] = json.loads(resp.read())
            return result


class Dnsmasq(Server):
    name = "dnsmasq"

    def start(self, work: Path, instances: list[Instance], core: int | None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        hosts = work / "hosts"
        hosts.write_text("".join(f"{i.address} {i.service}.{ZONE}\n" for i in instances))
        args = [
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            f"--addn-hosts={hosts}", f"--port={self.port}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--pid-file=", "--cache-size=10000", "--user=root",
            f"--local=/{ZONE}/", "--dns-forward-max=1000",
        ]  # fmt: skip
        args += [
            f"--srv-host={i.service}.{ZONE},{i.id}.{i.service}.{ZONE},{i.port},0,1"
            for i in instances
        ]
        self.proc = subprocess.Popen(
            pinned(args, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_ready()


class Nsd(Server):
    name = "nsd"

    def start(self, work: Path, instances: list[Instance], core: int | None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        zone = work / f"{ZONE}.zone"
        lines = [
            f"$ORIGIN {ZONE}.", "$TTL 5",
            "@ IN SOA ns hostmaster 1 3600 600 86400 5", "@ IN NS ns", "ns IN A 127.0.0.1",
        ]  # fmt: skip
        for i in instances:
            lines.append(f"{i.service} IN A {i.address}")
            lines.append(f"{i.service} IN SRV 0 1 {i.port} {i.id}.{i.service}")
            lines.append(f"{i.id}.{i.service} IN A {i.address}")
        zone.write_text("\n".join(lines) + "\n")
        conf = work / "nsd.conf"
        conf.write_text(
            f"""server:
    ip-address: 127.0.0.1@{self.port}
    server-count: 1
    username: ""
    zonesdir: "{work}"
    database: ""
    zonelistfile: "{work}/zone.list"
    xfrdfile: "{work}/xfrd.state"
    xfrdir: "{work}"
    pidfile: "{work}/nsd.pid"
    logfile: "{work}/nsd.log"
    rrl-ratelimit: 0
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: "{ZONE}"
    zonefile: "{zone}"
"""
        )
        self.proc = subprocess.Popen(
            pinned(["nsd", "-d", "-c", str(conf)], core),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_ready()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def tree_cpu(server: Server) -> float:
    """CPU seconds of the server and all its descendants (NSD serves from forked children)."""
    total = 0.0
    todo = [server.pid]
    while todo:
        pid = todo.pop()
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
        todo.extend(_children(pid))
    return total
