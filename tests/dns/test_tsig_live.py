"""TSIG (RFC 8945) on queries and transfers, checked with dig -y, kdig -y and dnspython."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import shutil
import time
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.zone
import pytest

from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError
from dnsreg.core.model import Registration
from dnsreg.dns.tsig import TsigKey
from tests.dns.test_transfer_live import dnsreg, run

DIG = shutil.which("dig")
KDIG = shutil.which("kdig")
SECRET = base64.b64encode(bytes(range(32))).decode()
OTHER = base64.b64encode(bytes(range(1, 33))).decode()
KEYS = (
    TsigKey("xfr-key.", "hmac-sha256", SECRET, ("*",), frozenset({"transfer"})),
    TsigKey("web-key.", "hmac-sha512", SECRET, ("web",), frozenset({"write"})),
)


def keyring(name: str, secret: str = SECRET, algorithm: str = "hmac-sha256") -> dns.tsig.Key:
    return dns.tsig.Key(name, secret, algorithm)


async def test_signed_queries_get_signed_replies_and_bad_ones_notauth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        await r.register("web", "web-1", address="10.0.0.5")
        for name, algorithm, tcp in (
            ("xfr-key", "hmac-sha256", False),
            ("web-key", "hmac-sha512", True),
        ):
            q = dns.message.make_query("web.service.local", "A")
            q.use_tsig(keyring(name, algorithm=algorithm))
            send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
            # dnspython verifies the reply's signature against the key (raises if not).
            msg = await send(q, "127.0.0.1", port=r.dns_port, timeout=3)
            assert msg.had_tsig
            assert msg.rcode() == dns.rcode.NOERROR
            assert [x.to_text() for x in msg.answer[0]] == ["10.0.0.5"]
        # Wrong secret: NOTAUTH + BADSIG; unknown key: NOTAUTH + BADKEY (RFC 8945 §5.2).
        for key, error in (
            (keyring("xfr-key", OTHER), dns.rcode.BADSIG),
            (keyring("nobody"), dns.rcode.BADKEY),
        ):
            q = dns.message.make_query("web.service.local", "A")
            q.use_tsig(key)
            raw = await _udp_raw(r.dns_port, q.to_wire())
            reply = dns.message.from_wire(raw, keyring=False)
            assert reply.rcode() == dns.rcode.NOTAUTH
            assert reply.tsig is not None
            assert reply.tsig[0].error == error
            assert reply.answer == []
        # A signature from outside the time fudge: BADTIME, and that reply is signed.
        q = dns.message.make_query("web.service.local", "A")
        q.use_tsig(keyring("xfr-key"))
        an_hour_ago = time.time() - 3600
        with monkeypatch.context() as patch:
            patch.setattr(time, "time", lambda: an_hour_ago)  # dnspython signs with time.time()
            wire = q.to_wire()
        raw = await _udp_raw(r.dns_port, wire)
        reply = dns.message.from_wire(raw, keyring=False)
        assert reply.rcode() == dns.rcode.NOTAUTH
        assert reply.tsig[0].error == dns.rcode.BADTIME  # type: ignore[index]
        # Unsigned queries are untouched.
        assert (await r.query("web.service.local")).rcode() == dns.rcode.NOERROR


async def _udp_raw(port: int, wire: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not future.done():
                future.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(wire)
        return await asyncio.wait_for(future, 3)
    finally:
        transport.close()


@pytest.mark.skipif(DIG is None, reason="dig is not on PATH (apt-get install bind9-dnsutils)")
async def test_dig_y_verifies_signed_reply_and_sees_badsig(tmp_path: Path) -> None:
    assert DIG is not None
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        await r.register("web", "web-1", address="10.0.0.5")
        port = str(r.dns_port)
        out = await run(DIG, "@127.0.0.1", "-p", port, "-y", f"hmac-sha256:xfr-key:{SECRET}",
                        "web.service.local", "A")  # fmt: skip
        assert "status: NOERROR" in out, out
        assert "10.0.0.5" in out
        assert "TSIG PSEUDOSECTION" in out
        assert "could not be validated" not in out, out
        out = await run(DIG, "@127.0.0.1", "-p", port, "-y", f"hmac-sha256:xfr-key:{OTHER}",
                        "web.service.local", "A")  # fmt: skip
        assert "status: NOTAUTH" in out, out
        assert "BADSIG" in out


@pytest.mark.skipif(KDIG is None, reason="kdig is not on PATH (apt-get install knot-dnsutils)")
async def test_transfer_with_a_transfer_key_only(tmp_path: Path) -> None:
    assert KDIG is not None
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        await r.register("web", "web-1", address="10.0.0.5")
        port = str(r.dns_port)
        out = await run(KDIG, "@127.0.0.1", "-p", port, "+time=3", "-y",
                        f"hmac-sha256:xfr-key:{SECRET}", "AXFR", "service.local.")  # fmt: skip
        assert out.count("\tSOA\t") == 2, out
        assert "10.0.0.5" in out
        assert ";; ERROR" not in out, out
        # dnspython's inbound transfer verifies every message's signature.
        zone = await asyncio.to_thread(
            dns.zone.from_xfr,
            dns.query.xfr("127.0.0.1", "service.local.", port=r.dns_port,
                          keyring=keyring("xfr-key"), timeout=5),
        )  # fmt: skip
        assert zone.get_rdataset("web", "A") is not None
        # No key, or a key without the transfer right: REFUSED (we are not in allow_transfer).
        for extra in ([], ["-y", f"hmac-sha512:web-key:{SECRET}"]):
            out = await run(KDIG, "@127.0.0.1", "-p", port, "+time=3", *extra, "AXFR",
                            "service.local.")  # fmt: skip
            assert "REFUSED" in out, out
            assert "10.0.0.5" not in out


def test_tsig_key_config_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "dnsreg.toml"
    good = f'name = "k1"\nalgorithm = "hmac-sha256"\nsecret = "{SECRET}"\nrights = ["transfer"]\n'
    path.write_text(f"[[tsig_keys]]\n{good}")
    config = load_config({"config": str(path)}, env={})
    assert config.tsig_keys[0].name == "k1."
    assert config.tsig_keys[0].rights == frozenset({"transfer"})
    for bad, says in (
        (good.replace("hmac-sha256", "hmac-md5"), "algorithm"),
        (good.replace(SECRET, "not base64!"), "base64"),
        (good.replace(SECRET, base64.b64encode(b"short").decode()), "16 bytes"),
        (good.replace('["transfer"]', '["fly"]'), "rights"),
        (good + 'colour = "red"\n', "unknown"),
    ):
        path.write_text(f"[[tsig_keys]]\n{bad}")
        with pytest.raises(ConfigError, match=says):
            load_config({"config": str(path)}, env={})
    path.write_text(f'notify_key = "nope"\n[[tsig_keys]]\n{good}')
    with pytest.raises(ConfigError, match="notify_key"):
        load_config({"config": str(path)}, env={})


async def test_a_streamed_transfer_is_signed_message_by_message(tmp_path: Path) -> None:
    """A zone larger than one slice is packed and signed as it streams: dnspython's
    inbound transfer checks every message's MAC, each chained to the one before
    (RFC 8945 §5.3.1), and the zone it builds holds every record."""
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        for n in range(3_000):  # ~12 000 records: several slices, dozens of messages
            address = ipaddress.ip_address(f"10.3.{n >> 8}.{n & 255}")
            r.server.registry.register(Registration("big", f"i{n}", address, 80, ttl=0), now=0.0)
        zone = await asyncio.to_thread(
            dns.zone.from_xfr,
            dns.query.xfr("127.0.0.1", "service.local.", port=r.dns_port,
                          keyring=keyring("xfr-key"), timeout=10),
        )  # fmt: skip
        node = zone.get_rdataset("big", "A")
        assert node is not None
        assert len(node) == 3_000
        # A wrong key is refused, and the refusal is the one unsigned-by-us message.
        with pytest.raises(dns.exception.DNSException):
            await asyncio.to_thread(
                dns.zone.from_xfr,
                dns.query.xfr("127.0.0.1", "service.local.", port=r.dns_port,
                              keyring=keyring("xfr-key", OTHER), timeout=10),
            )  # fmt: skip
