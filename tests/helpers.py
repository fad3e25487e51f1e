"""Test helpers for every folder: servers on 127.0.0.1 port 0, raw DNS exchanges, a fake clock.

Fixtures built on them live in ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rdatatype

from dnsreg.app import Server
from dnsreg.config import Config, HostPort


class FakeClock:
    """Wall-clock stand-in that only moves when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    zones = tmp_path / "zones"
    zones.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "dns": HostPort("127.0.0.1", 0),
        "http": HostPort("127.0.0.1", 0),
        "zones": zones,
        "data_dir": tmp_path / "data",
    }
    values.update(overrides)
    return Config(**values)


@dataclass
class Running:
    """A started in-process server with clients bound to it."""

    server: Server
    http: aiohttp.ClientSession
    base: str
    dns_port: int
    extra: dict[str, Any] = field(default_factory=dict)

    async def query(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, **make: Any
    ) -> dns.message.Message:
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)
        if tcp:
            return await dns.asyncquery.tcp(q, "127.0.0.1", port=self.dns_port, timeout=3)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.dns_port, timeout=3)

    async def register(self, service: str, instance: str, **body: Any) -> dict[str, Any]:
        body.setdefault("address", "10.0.0.5")
        body.setdefault("port", 8080)
        url = f"{self.base}/v1/services/{service}/instances/{instance}"
        async with self.http.put(url, json=body) as resp:
            payload: dict[str, Any] = await resp.json()
            assert resp.status in (200, 201), payload
            return payload


async def start_server(config: Config, **kwargs: Any) -> Server:
    server = Server(config, **kwargs)
    await server.start()
    return server


# --------------------------------------------------------------------------------------
# A server in its own process: for SIGKILL, SIGHUP and SIGTERM, and the real entry point.

_LISTEN = re.compile(r"DNS on [^ ]+:(\d+) \(udp\+tcp\), HTTP on https?://[^ ]+:(\d+)")


@dataclass
class Process:
    proc: subprocess.Popen[str]
    dns_port: int
    http_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        return self.log.read_text()


def spawn_server(
    workdir: Path, *args: str, timeout: float = 15.0, preexec_fn: Any = None
) -> Process:
    """Run ``python -m dnsreg serve`` in ``workdir`` on free ports; wait for its listen line.

    ``preexec_fn`` runs in the child before it starts (e.g. to set a resource limit)."""
    log = workdir / f"server-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "dnsreg", "serve", "--dns", "127.0.0.1:0", "--http",
             "127.0.0.1:0", *args],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
            preexec_fn=preexec_fn,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTEN.search(log.read_text())
        if match:
            return Process(proc, int(match.group(1)), int(match.group(2)), log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


@contextlib.contextmanager
def server_process(workdir: Path) -> Iterator[Process]:
    """A ``dnsreg serve`` process in ``workdir`` for as long as the block runs."""
    (workdir / "zones").mkdir(exist_ok=True)
    proc = spawn_server(workdir)
    try:
        yield proc
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=10)


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll a condition that has no event to wait on (another process's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


async def async_wait_until(predicate: Any, within: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


# --------------------------------------------------------------------------------------
# Raw DNS exchanges: for tests that must see (or send) exact bytes.


async def udp_exchange(port: int, packets: list[bytes], wait: float = 3.0) -> list[bytes]:
    """Send ``packets`` on one UDP socket, then a sentinel query; return replies before it.

    The server answers datagrams in arrival order, so once the sentinel's reply
    arrives every reply to ``packets`` has been sent: no sleep is needed to
    prove that a packet got no answer.
    """
    loop = asyncio.get_running_loop()
    sentinel = dns.message.make_query("sentinel.invalid.", "A", id=0xBEEF).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        for packet in packets:
            await loop.sock_sendall(sock, packet)
        await loop.sock_sendall(sock, sentinel)
        replies: list[bytes] = []
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), wait)
            if data[:2] == b"\xbe\xef" and data[12:].startswith(sentinel[12:29]):
                return replies
            replies.append(data)


async def udp_raw(port: int, packet: bytes, wait: float = 3.0) -> bytes | None:
    """One datagram's reply, or None when the server sent nothing for it."""
    replies = await udp_exchange(port, [packet], wait)
    assert len(replies) <= 1, replies
    return replies[0] if replies else None


async def udp_reply(port: int, packet: bytes, wait: float = 3.0) -> bytes:
    """The reply to one datagram, however late it comes (a deferred answer follows
    what was answered inline, so :func:`udp_raw`'s sentinel would overtake it)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        await loop.sock_sendall(sock, packet)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), wait)


async def tcp_raw(port: int, packet: bytes, wait: float = 3.0) -> bytes | None:
    """Send one length-prefixed message on a new connection; None: the server closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(len(packet).to_bytes(2, "big") + packet)
        await writer.drain()
        return await read_frame(reader, wait)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_frame(reader: asyncio.StreamReader, wait: float = 3.0) -> bytes | None:
    """Read one length-prefixed DNS message; None on a clean or abrupt close."""
    try:
        prefix = await asyncio.wait_for(reader.readexactly(2), wait)
        return await asyncio.wait_for(reader.readexactly(int.from_bytes(prefix, "big")), wait)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
