"""DNS UPDATE (RFC 2136) against a real server: nsupdate with TSIG, dig, dnspython, the HTTP API.

Every test reads the outcome the way a user would: what nsupdate prints, what
dig answers, what ``GET /v1/services/<svc>`` lists, and the revision (which
does not move when an update is refused).
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import dns.tsig
import dns.update
import pytest

from dnsreg.dns.tsig import TsigKey
from tests.dns.test_transfer_live import dnsreg, run
from tests.helpers import Running

NSUPDATE = shutil.which("nsupdate")
DIG = shutil.which("dig")
pytestmark = pytest.mark.skipif(
    NSUPDATE is None or DIG is None,
    reason="needs nsupdate and dig (apt-get install bind9-dnsutils)",
)

Z = "service.local"
SECRET = base64.b64encode(bytes(range(32))).decode()
SECRET512 = base64.b64encode(bytes(range(64))).decode()
WRONG = base64.b64encode(bytes(range(1, 33))).decode()
KEYS = (
    TsigKey("web-key.", "hmac-sha256", SECRET, ("web",), frozenset({"write"})),
    TsigKey("big-key.", "hmac-sha512", SECRET512, ("*",), frozenset({"write"})),
    TsigKey("xfr-key.", "hmac-sha256", SECRET, ("*",), frozenset({"transfer"})),
)
WEB_KEY = f"hmac-sha256:web-key:{SECRET}"

ADD_WEB1 = f"""
update add web-1.web.{Z} 60 SRV 0 1 8080 web-1.web.{Z}.
update add web-1.web.{Z} 60 A 10.0.0.5
update add web-1.web.{Z} 60 TXT "version=1.2"
"""


async def nsupdate(port: int, commands: str, *args: str) -> tuple[int, str]:
    """Run nsupdate with ``commands`` on stdin; (exit status, what it printed)."""
    assert NSUPDATE is not None
    # A blank line is nsupdate's "send": keep the commands one message.
    lines = [line for line in commands.splitlines() if line.strip()]
    script = "\n".join([f"server 127.0.0.1 {port}", f"zone {Z}", *lines, "send", ""])
    proc = await asyncio.create_subprocess_exec(
        NSUPDATE, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(script.encode()), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def dig(port: int, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    """(status, answer lines) as dig prints them."""
    assert DIG is not None
    out = await run(DIG, "@127.0.0.1", "-p", str(port), name, rdtype, "+noall", "+comments",
                    "+answer")  # fmt: skip
    status = re.search(r"status: (\w+)", out)
    assert status is not None, out
    # Fields split on any whitespace: dig pads with tabs or spaces depending on the name.
    lines = [" ".join(line.split()) for line in out.splitlines() if line and line[0] != ";"]
    return status.group(1), lines


async def listed(r: Running, service: str = "web") -> dict[str, dict[str, Any]]:
    async with r.http.get(f"{r.base}/v1/services/{service}") as resp:
        if resp.status == 404:
            return {}
        body = await resp.json()
        assert resp.status == 200, body
        return {i["id"]: i for i in body["instances"]}


def revision(r: Running) -> int:
    return r.server.registry.revision


async def test_nsupdate_adds_an_instance_dig_and_http_see_it_and_a_delete_removes_it(
    tmp_path: Path,
) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        code, out = await nsupdate(r.dns_port, ADD_WEB1, "-y", WEB_KEY)
        assert code == 0, out
        assert await dig(r.dns_port, f"web-1.web.{Z}") == (
            "NOERROR", [f"web-1.web.{Z}. 60 IN A 10.0.0.5"]
        )  # fmt: skip
        srv = f"web.{Z}. 60 IN SRV 0 1 8080 web-1.web.{Z}."
        assert await dig(r.dns_port, f"web.{Z}", "SRV") == ("NOERROR", [srv])
        instance = (await listed(r))["web-1"]
        assert (instance["address"], instance["port"], instance["meta"], instance["dns_ttl"]) == (
            "10.0.0.5", 8080, {"version": "1.2"}, 60
        )  # fmt: skip
        assert instance["ttl"] == 30  # no Update Lease option: the default ttl
        before = revision(r)
        code, out = await nsupdate(r.dns_port, f"update delete web-1.web.{Z}", "-y", WEB_KEY)
        assert code == 0, out
        assert (await dig(r.dns_port, f"web-1.web.{Z}"))[0] == "NXDOMAIN"
        assert await listed(r) == {}
        assert revision(r) == before + 1


async def test_over_tcp_with_a_key_file_and_hmac_sha512(tmp_path: Path) -> None:
    keyfile = tmp_path / "big.key"
    keyfile.write_text(f'key "big-key" {{ algorithm hmac-sha512; secret "{SECRET512}"; }};\n')
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        # -v: TCP. A DNS-SD instance name, its SRV target the <id>.<svc> name.
        commands = f"""
update add db-1._db._tcp.{Z} 30 SRV 0 1 5432 db-1.db.{Z}.
update add db-1.db.{Z} 30 AAAA 2001:db8::7
"""
        code, out = await nsupdate(r.dns_port, commands, "-v", "-k", str(keyfile))
        assert code == 0, out
        assert (await dig(r.dns_port, f"db-1.db.{Z}", "AAAA"))[1] == [
            f"db-1.db.{Z}. 30 IN AAAA 2001:db8::7"
        ]
        code, out = await nsupdate(r.dns_port, ADD_WEB1, "-y", f"hmac-sha512:big-key:{SECRET512}")
        assert code == 0, out
        assert set(await listed(r, "db")) == {"db-1"}
        assert set(await listed(r)) == {"web-1"}


async def test_prerequisites_that_fail_change_nothing(tmp_path: Path) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        assert (await nsupdate(r.dns_port, ADD_WEB1, "-y", WEB_KEY))[0] == 0
        before = revision(r)
        add_web2 = f"""
update add web-2.web.{Z} 60 SRV 0 1 8081 web-2.web.{Z}.
update add web-2.web.{Z} 60 A 10.0.0.6
"""
        for prereq, printed in (
            (f"prereq nxdomain web-1.web.{Z}", "update failed: YXDOMAIN"),
            (f"prereq yxdomain web-7.web.{Z}", "update failed: NXDOMAIN"),
            (f"prereq yxrrset web-9.web.{Z} SRV", "update failed: NXRRSET"),
            (f"prereq nxrrset web-1.web.{Z} A", "update failed: YXRRSET"),
            (f"prereq yxrrset web-1.web.{Z} A 10.0.0.99", "update failed: NXRRSET"),
        ):
            code, out = await nsupdate(r.dns_port, f"{prereq}\n{add_web2}", "-y", WEB_KEY)
            assert code != 0
            assert printed in out, out
        assert revision(r) == before
        assert set(await listed(r)) == {"web-1"}
        # A prerequisite that holds: the update goes through.
        code, out = await nsupdate(
            r.dns_port, f"prereq yxrrset web-1.web.{Z} A 10.0.0.5\n{add_web2}", "-y", WEB_KEY
        )
        assert code == 0, out
        assert set(await listed(r)) == {"web-1", "web-2"}


async def test_unsigned_wrong_secret_and_unauthorised_keys_are_refused(tmp_path: Path) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        before = revision(r)
        cases = [
            ((), "update failed: REFUSED"),  # unsigned
            (("-y", f"hmac-sha256:web-key:{WRONG}"), "update failed: NOTAUTH(BADSIG)"),
            (("-y", f"hmac-sha256:nobody:{SECRET}"), "update failed: NOTAUTH(BADKEY)"),
            (("-y", f"hmac-sha256:xfr-key:{SECRET}"), "update failed: REFUSED"),  # no write
        ]
        for args, printed in cases:
            code, out = await nsupdate(r.dns_port, ADD_WEB1, *args)
            assert code != 0
            assert printed in out, (args, out)
        # web-key's services are ["web"]: not db.
        code, out = await nsupdate(
            r.dns_port,
            f"update add d.db.{Z} 60 SRV 0 1 1 d.db.{Z}.\nupdate add d.db.{Z} 60 A 10.0.0.7",
            "-y", WEB_KEY,
        )  # fmt: skip
        assert code != 0
        assert "update failed: REFUSED" in out
        assert revision(r) == before
        assert (await dig(r.dns_port, f"web-1.web.{Z}"))[0] == "NXDOMAIN"
        assert len(r.server.registry) == 0


async def test_an_update_whose_second_part_is_refused_changes_nothing(tmp_path: Path) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        before = revision(r)
        # The first instance is fine; the A at the service name is not an instance's.
        commands = ADD_WEB1 + f"update add web.{Z} 60 A 10.0.0.1\n"
        code, out = await nsupdate(r.dns_port, commands, "-y", WEB_KEY)
        assert code != 0
        assert "update failed: REFUSED" in out
        assert revision(r) == before
        assert await listed(r) == {}


def lease_update(seconds: int, instance: str = "web-4") -> dns.update.UpdateMessage:
    key = dns.tsig.Key("web-key.", SECRET, "hmac-sha256")
    u = dns.update.UpdateMessage(f"{Z}.", keyring=key)
    u.add(f"{instance}.web.{Z}.", 60, "SRV", f"0 1 8083 {instance}.web.{Z}.")
    u.add(f"{instance}.web.{Z}.", 60, "A", "10.0.0.9")
    # RFC 9664 §4: the Update Lease option, code 2, a 4-octet LEASE.
    lease = dns.edns.GenericOption(dns.edns.OptionType.make(2), struct.pack("!I", seconds))
    u.use_edns(0, options=[lease])
    return u


def granted(reply: dns.message.Message) -> list[int]:
    return [struct.unpack("!I", o.to_wire()[:4])[0] for o in reply.options if o.otype == 2]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_an_update_lease_of_2s_is_served_then_expires(tmp_path: Path, tcp: bool) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        sent = time.monotonic()
        # dnspython checks the reply's TSIG against the key (it raises if unsigned or bad).
        reply = await send(lease_update(2), "127.0.0.1", port=r.dns_port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.had_tsig
        assert granted(reply) == [2]  # RFC 9664 §4: the lease granted, echoed
        assert (await dig(r.dns_port, f"web-4.web.{Z}"))[1] == [f"web-4.web.{Z}. 60 IN A 10.0.0.9"]
        assert (await listed(r))["web-4"]["ttl"] == 2
        # Wait on the HTTP blocking query (no fixed sleep) until it is gone.
        index = revision(r)
        while True:
            url = f"{r.base}/v1/services/web?index={index}&wait=10s"
            async with r.http.get(url) as resp:
                index = int(resp.headers["X-Dnsreg-Index"])
                body = await resp.json()
            if resp.status == 404 or not body.get("instances"):
                break
            assert time.monotonic() - sent < 15, "the 2 s lease did not expire"
        assert time.monotonic() - sent >= 1.9  # not before the lease ran out
        assert (await dig(r.dns_port, f"web-4.web.{Z}"))[0] == "NXDOMAIN"


async def test_repeating_the_update_renews_and_a_long_lease_is_clamped(tmp_path: Path) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        first = await dns.asyncquery.udp(lease_update(600), "127.0.0.1", port=r.dns_port, timeout=5)
        deadline = (await listed(r))["web-4"]["lease_deadline"]
        again = await dns.asyncquery.udp(lease_update(600), "127.0.0.1", port=r.dns_port, timeout=5)
        assert granted(first) == granted(again) == [600]
        assert (await listed(r))["web-4"]["lease_deadline"] > deadline  # renewed
        huge = await dns.asyncquery.udp(
            lease_update(10**7), "127.0.0.1", port=r.dns_port, timeout=5
        )
        assert granted(huge) == [86400]  # SPEC §2: a lease is at most 24 h
        assert (await listed(r))["web-4"]["ttl"] == 86400


async def test_a_query_pipelined_behind_an_update_on_tcp_waits_for_it(tmp_path: Path) -> None:
    async with dnsreg(tmp_path, tsig_keys=KEYS) as r:
        u = lease_update(60)
        q = dns.message.make_query(f"web-4.web.{Z}.", "A")
        reader, writer = await asyncio.open_connection("127.0.0.1", r.dns_port)
        frames = [m.to_wire() for m in (u, q)]
        writer.write(b"".join(len(f).to_bytes(2, "big") + f for f in frames))  # one burst
        replies = []
        for _ in frames:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
            replies.append(await reader.readexactly(size))
        writer.close()
        first = dns.message.from_wire(replies[0], keyring=u.keyring, request_mac=u.mac)
        second = dns.message.from_wire(replies[1])
        assert (first.id, first.rcode()) == (u.id, dns.rcode.NOERROR)
        # Replies in order (RFC 7766 §6.2.1), and the query saw the update's result.
        assert second.id == q.id
        assert [rr.to_text() for rr in second.answer[0]] == ["10.0.0.9"]
