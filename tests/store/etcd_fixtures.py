"""Real etcd for tests: members started from PATH on free loopback ports, and a cuttable proxy.

When the ``etcd`` binary is missing the tests that need it are skipped with a
reason saying how to install it (``.ci/run`` installs it, so CI runs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ETCD = shutil.which("etcd")
needs_etcd = pytest.mark.skipif(
    ETCD is None,
    reason="etcd is not installed: apt-get install etcd-server (Debian; .ci/run does this)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"  # https: the cluster was started with TLS flags (extra_args)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """``size`` members of one etcd cluster, each its own process."""

    root: Path
    size: int = 1
    members: list[Member] = field(default_factory=list)
    # TLS clusters: etcd flags such as --cert-file, and the context the fixture's own
    # health checks and calls use (it must carry a client cert under --client-cert-auth).
    extra_args: list[str] = field(default_factory=list)
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        scheme = "https" if self.tls is not None else "http"
        for n in range(self.size):
            name = f"m{n}"
            self.members.append(
                Member(
                    name,
                    free_port(),
                    free_port(),
                    self.root / name,
                    self.root / f"{name}.log",
                    scheme=scheme,
                )
            )

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def store_url(self, prefix: str = "dnsreg", members: list[Member] | None = None) -> str:
        chosen = members or self.members
        return f"etcd://{','.join(m.endpoint for m in chosen)}/{prefix}"

    def _launch(self, member: Member) -> None:
        assert ETCD is not None
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        command = [
            ETCD,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.url,
            "--advertise-client-urls", member.url,
            "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"dnsreg-test-{os.getpid()}",
            "--logger", "zap",
            "--log-level", "error",
            *self.extra_args,
        ]  # fmt: skip
        with member.log.open("ab") as out:  # the child keeps its own descriptor
            member.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def session(self, total: float) -> aiohttp.ClientSession:
        """An HTTP session for the fixture's own calls (over TLS for a TLS cluster)."""
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=total),
            connector=aiohttp.TCPConnector(ssl=self.tls if self.tls is not None else True),
        )

    async def start(self, within: float = 15.0) -> None:
        for member in self.members:
            self._launch(member)
        await self.wait_healthy(self.members, within)

    async def wait_healthy(self, members: list[Member], within: float = 15.0) -> None:
        """Every member in ``members`` answers /health with a leader in place."""
        deadline = time.monotonic() + within
        async with self.session(1) as http:
            for member in members:
                while True:
                    if member.proc is not None and member.proc.poll() is not None:
                        raise RuntimeError(f"etcd {member.name} exited:\n{member.log.read_text()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(member.url + "/health") as resp:
                            # etcd sends this JSON as text/plain.
                            health = json.loads(await resp.text()).get("health")
                            if resp.status == 200 and health == "true":
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"etcd {member.name} not healthy:\n{member.log.read_text()}"
                        )
                    await asyncio.sleep(0.05)

    async def _end(self, member: Member, sig: signal.Signals) -> None:
        proc = member.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
        await asyncio.to_thread(proc.wait, 15)
        member.proc = None

    async def kill(self, member: Member) -> None:
        await self._end(member, signal.SIGKILL)

    async def stop(self, member: Member) -> None:
        await self._end(member, signal.SIGTERM)

    async def restart(self, member: Member) -> None:
        """Start a stopped member again on its ports and data (it rejoins its cluster)."""
        self._launch(member)
        await self.wait_healthy([member])

    async def leader(self) -> Member:
        """The member that leads now (asked of a live member)."""
        async with self.session(2) as http:
            ids: dict[str, Member] = {}
            leader = ""
            for member in self.members:
                if member.proc is None:
                    continue
                async with http.post(member.url + "/v3/maintenance/status", json={}) as resp:
                    body = await resp.json()
                ids[body["header"]["member_id"]] = member
                leader = body["leader"]
            return ids[leader]

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON-gateway call on any live member (test plumbing: compaction, reads)."""
        async with self.session(5) as http:
            for member in self.members:
                if member.proc is None:
                    continue
                async with http.post(member.url + path, json=body) as resp:
                    result: dict[str, Any] = await resp.json()
                    return result
        raise RuntimeError("no live etcd member")

    async def close(self) -> None:
        for member in self.members:
            await self._end(member, signal.SIGKILL)


class Proxy:
    """A TCP relay to one etcd member that a test can cut and restore (a network partition)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes.difference_update(tasks)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def close(self) -> None:
        await self.cut()


@contextlib.asynccontextmanager
async def etcd_cluster(root: Path, size: int = 1) -> AsyncIterator[EtcdCluster]:
    cluster = EtcdCluster(root, size)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()  # waits for every member to exit before tmp_path goes


def _require_etcd() -> None:
    if ETCD is None:
        pytest.skip(
            "etcd is not installed: apt-get install etcd-server (Debian; .ci/run does this)"
        )


@pytest.fixture(name="etcd")
async def etcd_fixture(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    """One etcd member on free loopback ports, in a temporary data dir."""
    _require_etcd()
    async with etcd_cluster(tmp_path / "etcd", 1) as cluster:
        yield cluster


@pytest.fixture(name="etcd3")
async def etcd3_fixture(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    """A three-member etcd cluster on free loopback ports."""
    _require_etcd()
    async with etcd_cluster(tmp_path / "etcd3", 3) as cluster:
        yield cluster


async def poll(predicate: Callable[[], Any], within: float = 5.0, interval: float = 0.005) -> float:
    """Wait until ``predicate()`` (sync or async) is true; return how long it took."""
    t0 = time.monotonic()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
