"""A lean HTTP/1.1 keep-alive load client for the API (registrations and heartbeats).

Hand-rolled on asyncio streams because a general client would be the
bottleneck, not the server being measured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""

    def encode(self) -> bytes:
        return (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode() + self.body


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Request
) -> bool:
    """Send one request on a keep-alive connection; True for a 2xx."""
    writer.write(req.encode())
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status_line.startswith(b"HTTP/1.1 2")


async def _connection(port: int, requests: Sequence[Request], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for req in requests:
            if not await _exchange(reader, writer, req):
                errors.append(1)
    finally:
        writer.close()


async def paced(
    port: int, make: Callable[[int], Request], interval: float, seconds: float, pool: int = 8
) -> LoadResult:
    """Start request ``make(n)`` every ``interval`` seconds for ``seconds``, whatever the
    server's latency (up to ``pool`` in flight): a steady change rate, not a closed loop."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(pool)]
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    errors: list[int] = []
    done = 0

    async def one(n: int) -> None:
        nonlocal done
        conn = await idle.get()
        try:
            if not await _exchange(*conn, make(n)):
                errors.append(1)
            done += 1
        finally:
            idle.put_nowait(conn)

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    n = 0
    while loop.time() - start < seconds:
        tasks.append(asyncio.create_task(one(n)))
        n += 1
        await asyncio.sleep(max(0.0, start + n * interval - loop.time()))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for _, writer in conns:
        writer.close()
    return LoadResult(done, len(errors), elapsed)


async def run(port: int, requests: Sequence[Request], connections: int) -> LoadResult:
    shares = [requests[i::connections] for i in range(connections)]
    errors: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, share, errors) for share in shares if share))
    return LoadResult(len(requests), len(errors), time.perf_counter() - start)


def register_request(service: str, iid: str, address: str, port: int, ttl: float) -> Request:
    body = json.dumps({"address": address, "port": port, "ttl": ttl}).encode()
    return Request("PUT", f"/v1/services/{service}/instances/{iid}", body)


def heartbeat_request(service: str, iid: str) -> Request:
    return Request("PUT", f"/v1/services/{service}/instances/{iid}/heartbeat")
