"""Static zone files served by the real process: master-file syntax, SIGHUP, clashes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.helpers import Process, wait_until

EXAMPLE = """\
; relative names everywhere, RDATA included
$ORIGIN example.com.
$TTL 300
@       IN SOA  ns1 hostmaster 1 3600 600 86400 60
        IN NS   ns1
        IN MX   10 mail
ns1     IN A    192.0.2.1
mail    IN A    192.0.2.25
web     IN A    192.0.2.10
www     IN CNAME web
_http._tcp IN SRV 0 5 80 web
$INCLUDE inc/extra.db
"""

EXTRA = """\
api 120 IN A 192.0.2.30
txt     IN TXT "hello world"
"""

DYNAMIC = """\
$TTL 30
static  IN A 192.0.2.99
alias   IN CNAME static
"""


def q(proc: Process, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(
        dns.message.make_query(name, rdtype), "127.0.0.1", port=proc.dns_port, timeout=3
    )


def texts(msg: dns.message.Message, rdtype: str, section: str = "answer") -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(r.to_text() for rr in getattr(msg, section) if rr.rdtype == wanted for r in rr)


def write_zones(workdir: Path) -> None:
    zones = workdir / "zones"
    (zones / "inc").mkdir(parents=True, exist_ok=True)
    (zones / "example.com.zone").write_text(EXAMPLE)
    (zones / "inc" / "extra.db").write_text(EXTRA)
    (zones / "service.local.zone").write_text(DYNAMIC)


def test_zone_files_are_served_as_written(spawn: Any, tmp_path: Path) -> None:
    write_zones(tmp_path)
    proc: Process = spawn()

    msg = q(proc, "web.example.com", "A")
    assert msg.flags & dns.flags.AA
    assert texts(msg, "A") == ["192.0.2.10"]
    assert msg.answer[0].ttl == 300  # $TTL

    msg = q(proc, "www.example.com", "A")  # CNAME to a relative name, chased
    assert texts(msg, "CNAME") == ["web.example.com."]
    assert texts(msg, "A") == ["192.0.2.10"]

    msg = q(proc, "example.com", "MX")
    assert texts(msg, "MX") == ["10 mail.example.com."]
    assert texts(msg, "A", "additional") == ["192.0.2.25"]

    msg = q(proc, "_http._tcp.example.com", "SRV")
    assert texts(msg, "SRV") == ["0 5 80 web.example.com."]
    assert texts(msg, "A", "additional") == ["192.0.2.10"]

    msg = q(proc, "example.com", "NS")
    assert texts(msg, "NS") == ["ns1.example.com."]

    msg = q(proc, "api.example.com", "A")  # from $INCLUDE, with its own TTL
    assert texts(msg, "A") == ["192.0.2.30"]
    assert msg.answer[0].ttl == 120
    assert texts(q(proc, "txt.example.com", "TXT"), "TXT") == ['"hello world"']

    msg = q(proc, "nope.example.com", "A")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    (soa,) = msg.authority
    assert soa.name.to_text() == "example.com."
    assert soa.ttl == 60  # RFC 2308 §5: min(SOA TTL, MINIMUM)
    assert soa[0].mname.to_text() == "ns1.example.com."

    msg = q(proc, "_tcp.example.com", "A")  # empty non-terminal
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []

    # Static names in the dynamic zone, relative to it.
    assert texts(q(proc, "static.service.local", "A"), "A") == ["192.0.2.99"]
    msg = q(proc, "alias.service.local", "A")
    assert texts(msg, "CNAME") == ["static.service.local."]
    assert texts(msg, "A") == ["192.0.2.99"]


async def test_sighup_reloads_and_a_broken_file_keeps_the_old_zones(
    spawn: Any, tmp_path: Path
) -> None:
    write_zones(tmp_path)
    proc: Process = spawn()
    zone = tmp_path / "zones" / "example.com.zone"
    assert texts(q(proc, "web.example.com", "A"), "A") == ["192.0.2.10"]

    # A changed file, and a new zone next to it.
    zone.write_text(EXAMPLE.replace("192.0.2.10", "192.0.2.11"))
    (tmp_path / "zones" / "example.net.zone").write_text(
        "$TTL 60\n@ IN SOA ns1.example.com. h.example.com. 1 2 3 4 5\n"
        "@ IN NS ns1.example.com.\nhost IN A 198.51.100.1\n"
    )
    proc.signal(signal.SIGHUP)
    wait_until(lambda: texts(q(proc, "web.example.com", "A"), "A") == ["192.0.2.11"])
    assert texts(q(proc, "host.example.net", "A"), "A") == ["198.51.100.1"]

    # A broken file: line 9 has an address that is not one.
    broken = EXAMPLE.replace("192.0.2.10", "192.0.2.12").replace(
        "web     IN A    192.0.2.12", "web     IN A    192.0.2.999"
    )
    assert broken.splitlines()[8].endswith("192.0.2.999")
    zone.write_text(broken)
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "zone reload failed" in proc.log_text())
    failure = next(line for line in proc.log_text().splitlines() if "zone reload failed" in line)
    assert f"{zone}:9" in failure, failure  # file and line
    assert "ERROR" in failure
    # Old zones still served, all of them.
    assert texts(q(proc, "web.example.com", "A"), "A") == ["192.0.2.11"]
    assert texts(q(proc, "host.example.net", "A"), "A") == ["198.51.100.1"]

    # A broken $INCLUDEd file is named by its own path and line.
    zone.write_text(EXAMPLE)
    include = tmp_path / "zones" / "inc" / "extra.db"
    include.write_text(EXTRA + "bad IN A 192.0.2\nlater IN A 192.0.2.3\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: proc.log_text().count("zone reload failed") == 2)
    failure = [line for line in proc.log_text().splitlines() if "zone reload failed" in line][-1]
    assert "inc/extra.db:3" in failure, failure  # as written in $INCLUDE
    assert texts(q(proc, "web.example.com", "A"), "A") == ["192.0.2.11"]

    # Fixed again: reloads.
    include.write_text(EXTRA)
    proc.signal(signal.SIGHUP)
    wait_until(lambda: texts(q(proc, "web.example.com", "A"), "A") == ["192.0.2.10"])

    # Reload that would shadow a registered service is refused the same way.
    async with aiohttp.ClientSession() as http:
        url = f"{proc.base}/v1/services/api/instances/api-1"
        async with http.put(url, json={"address": "10.0.0.1", "port": 80}) as resp:
            assert resp.status == 201
    (tmp_path / "zones" / "service.local.zone").write_text(DYNAMIC + "api IN A 192.0.2.50\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: proc.log_text().count("zone reload failed") == 3)
    failure = [line for line in proc.log_text().splitlines() if "zone reload failed" in line][-1]
    assert "api.service.local" in failure, failure
    assert texts(q(proc, "api.service.local", "A"), "A") == ["10.0.0.1"]


async def test_registering_over_a_static_name_is_409(spawn: Any, tmp_path: Path) -> None:
    write_zones(tmp_path)
    proc: Process = spawn()
    async with aiohttp.ClientSession() as http:
        url = f"{proc.base}/v1/services/static/instances/s-1"
        async with http.put(url, json={"address": "10.0.0.1", "port": 80}) as resp:
            assert resp.status == 409
            body = await resp.json()
    assert "static.service.local" in body["error"]
    assert texts(q(proc, "static.service.local", "A"), "A") == ["192.0.2.99"]


async def test_zone_clashing_with_a_registered_service_stops_startup(
    spawn: Any, tmp_path: Path
) -> None:
    first: Process = spawn()
    async with aiohttp.ClientSession() as http:
        url = f"{first.base}/v1/services/web/instances/web-1"
        async with http.put(url, json={"address": "10.0.0.1", "port": 80}) as resp:
            assert resp.status == 201
    first.signal(signal.SIGTERM)
    assert first.proc.wait(timeout=10) == 0

    (tmp_path / "zones" / "service.local.zone").write_text("$TTL 60\nweb IN A 192.0.2.1\n")
    with pytest.raises(RuntimeError, match=r"exited with 1") as failed:
        spawn(workdir=tmp_path)
    assert "web.service.local" in str(failed.value)
    assert "'web'" in str(failed.value)


def test_broken_zone_file_at_startup_names_file_and_line(spawn: Any, tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    bad = zones / "example.org.zone"
    bad.write_text("$TTL 60\n@ IN SOA ns h 1 2 3 4 5\n@ IN NS ns\nns IN A 1.2.3\n")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with 1") as failed:
        spawn()
    assert f"{bad}:4" in str(failed.value)
    assert time.monotonic() - started < 10
