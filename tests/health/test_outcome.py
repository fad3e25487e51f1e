"""What check output may say (SPEC §7): the checker's words, never the target's bytes."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

from dnsreg.health.http_probe import ProtocolError
from dnsreg.health.outcome import HostTurns, error_kind, host_of, status_line


def test_status_line_uses_the_registered_phrase() -> None:
    assert status_line(503) == "HTTP 503 Service Unavailable"
    assert status_line(200) == "HTTP 200 OK"
    assert status_line(299) == "HTTP 299"  # unregistered code: the number alone


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.1.1.1', 5699)"),
         "connection refused"),
        (ConnectionResetError(), "connection reset"),
        (TimeoutError(), "timed out"),
        (ssl.SSLCertVerificationError("certificate verify failed: self-signed"),
         "TLS error: certificate not trusted"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
         "the host name does not resolve"),
        (ProtocolError("not an HTTP/1.x response: 'SECRET-BANNER'"), "not an HTTP/1.x response"),
        (ProtocolError("malformed header line: 'X-Key SECRET'"), "malformed header line"),
        (OSError(errno.EHOSTUNREACH, "No route to host 10.9.9.9"), "no route to host"),
    ],
)  # fmt: skip
def test_error_kinds_carry_no_target_data(exc: BaseException, kind: str) -> None:
    assert error_kind(exc) == kind


def test_host_keys_are_canonical() -> None:
    assert host_of("[::0001]") == "::1"
    assert host_of("Example.ORG") == "example.org"
    assert host_of("127.000.0.1") == "127.000.0.1"  # not an IP literal to ipaddress: a name


async def test_host_turns_one_at_a_time_per_host_and_forget_idle_hosts() -> None:
    turns = HostTurns()
    running: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    both = asyncio.Event()

    async def probe(host: str) -> None:
        async with turns.turn(host):
            running[host] += 1
            peak[host] = max(peak[host], running[host])
            if running["a"] and running["b"]:
                both.set()  # different hosts do run side by side
            await asyncio.sleep(0)
            running[host] -= 1

    await asyncio.gather(*(probe(h) for h in "ab" * 20))
    assert peak == {"a": 1, "b": 1}
    assert both.is_set()
    assert len(turns) == 0


async def test_host_turns_limit_is_a_per_host_bound() -> None:
    turns = HostTurns(limit=2)
    running = peak = 0

    async def probe() -> None:
        nonlocal running, peak
        async with turns.turn("10.0.0.5"):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            running -= 1

    await asyncio.gather(*(probe() for _ in range(10)))
    assert peak == 2
    with pytest.raises(ValueError, match="at least 1"):
        HostTurns(limit=0)
