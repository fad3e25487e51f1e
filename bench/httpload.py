"""A lean HTTP/1.1 keep-alive load client for the API (registrations and heartbeats).

Hand-rolled on asyncio streams because a general client would be the
bottleneck, not the server being measured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
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


async def _connection(port: int, requests: Sequence[Request], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for req in requests:
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
            if not status_line.startswith(b"HTTP/1.1 2"):
                errors.append(1)
    finally:
        writer.close()


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
