"""Failed accepts are seen: ``dnsreg serve`` (on uvloop) out of descriptors under a
connection flood logs one warning, counts every failure, and serves again afterwards.

uvloop accepts in C and drops EMFILE silently; dnsreg accepts in Python
(``dnsreg.http.accept``) so the failure is counted and paced, for HTTP and DNS
over TCP alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
from prometheus_client.parser import text_string_to_metric_families

from dnsreg.http.accept import AcceptFailures, serve
from tests.helpers import Process, async_wait_until, spawn_server

NOFILE = 128  # the server's own limit: a flood of 200 connections exhausts it
FLOOD = 200
WARNING = "cannot accept a connection: Too many open files (open-files limit 128)"


def _limit_nofile() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextlib.contextmanager
def _server(tmp_path: Path) -> Iterator[Process]:
    (tmp_path / "zones").mkdir(exist_ok=True)
    conf = tmp_path / "dnsreg.toml"
    # A reserve of 1, one DNS TCP slot: the HTTP cap (126) is above what is left of the 128
    # descriptors, so the flood reaches the limit itself rather than the cap.
    conf.write_text("fd_reserve = 1\ntcp_max_connections = 1\n")
    proc = spawn_server(tmp_path, "--config", str(conf), preexec_fn=_limit_nofile)
    try:
        yield proc
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=10)


async def _flood(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that connect and say nothing (the kernel completes each
    handshake from the listen queue, accepted or not)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        socks.append(sock)
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
    return socks


def _failures(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["listener"], s.labels["errno"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dnsreg_accept_failures_total"
    }


async def test_a_connection_flood_out_of_descriptors_is_logged_once_counted_and_survived(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as proc:
        socks = await _flood(proc.http_port, FLOOD)
        try:
            await async_wait_until(lambda: WARNING in proc.log_text(), within=10)
            # The flood lasts 2.5 s more (its length, not a wait for something):
            # accepting resumes each second and fails again.
            await asyncio.sleep(2.5)
        finally:
            for sock in socks:
                sock.close()
        async with aiohttp.ClientSession() as http:

            async def scraped() -> str | None:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(
                        proc.base + "/metrics", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        return await resp.text() if resp.status == 200 else None
                return None

            text: list[str] = []

            async def answers() -> bool:
                got = await scraped()
                if got is not None:
                    text.append(got)
                return got is not None

            await async_wait_until(answers, within=15, interval=0.2)
            url = f"{proc.base}/v1/services/web/instances/web-1"
            async with http.put(url, json={"address": "10.0.0.1", "port": 80}) as resp:
                assert resp.status == 201, await resp.text()
        failures = _failures(text[0])
        # Each resume after the 1 s pause met the flood again: several failures ...
        assert failures.get(("HTTP", "EMFILE"), 0) >= 2, failures
        log = proc.log_text()
        # ... and one warning line for all of them (at most one per 10 s).
        assert log.count(WARNING) == 1, log
        assert "Traceback" not in log
        # DNS over TCP answers again too.
        reply = await dns.asyncquery.tcp(
            dns.message.make_query("web.service.local", "A"), "127.0.0.1", port=proc.dns_port,
            timeout=3,
        )  # fmt: skip
        assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.0.0.1"]


async def test_serve_forever_returns_when_the_listener_closes() -> None:
    # asyncio.AbstractServer's contract: a caller awaiting serve_forever() is released by close().
    listener = await serve(asyncio.Protocol, "127.0.0.1", 0, name="test", failures=AcceptFailures())
    waiting = asyncio.create_task(listener.serve_forever())
    await asyncio.sleep(0)
    assert not waiting.done()
    listener.close()
    await asyncio.wait_for(waiting, 2)
    await listener.wait_closed()
    assert not listener.is_serving()
