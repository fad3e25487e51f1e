"""docs/update.md's key, nsupdate examples and dnspython example run as pasted."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from dnsreg.dns.tsig import parse_keys
from tests.dns.test_transfer_live import dnsreg
from tests.dns.test_update import dig, listed

DOC = Path(__file__).resolve().parents[2] / "docs" / "update.md"
pytestmark = pytest.mark.skipif(
    shutil.which("nsupdate") is None or shutil.which("dig") is None,
    reason="needs nsupdate and dig (apt-get install bind9-dnsutils)",
)


def blocks(lang: str) -> list[str]:
    # The info string may go on after the language (tests/docs_blocks.py: "sh tested=...").
    return re.findall(rf"```{lang}(?:[ \t][^\n]*)?\n(.*?)```", DOC.read_text(), re.S)


async def sh(script: str, port: int) -> tuple[int, str]:
    # Only the port changes: the server listens on a free one here.
    script = script.replace("server 127.0.0.1 8600", f"server 127.0.0.1 {port}")
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_documented_examples_do_what_the_page_says(tmp_path: Path) -> None:
    (config,) = blocks("toml")
    keys = parse_keys(tomllib.loads(config)["tsig_keys"])
    add, delete, prereq = [b for b in blocks("sh") if b.startswith("nsupdate ")]
    (python,) = blocks("python")
    async with dnsreg(tmp_path, tsig_keys=keys) as r:
        code, out = await sh(add, r.dns_port)
        assert code == 0, out
        srv = "web.service.local. 60 IN SRV 0 1 8080 web-1.web.service.local."
        assert await dig(r.dns_port, "web.service.local", "SRV") == ("NOERROR", [srv])
        web1 = (await listed(r))["web-1"]
        assert (web1["meta"], web1["ttl"]) == ({"version": "1.2"}, 30)
        code, out = await sh(delete, r.dns_port)
        assert code == 0, out
        assert (await dig(r.dns_port, "web-1.web.service.local"))[0] == "NXDOMAIN"
        # The prerequisite: the first run registers web-2, the second is refused.
        assert (await sh(prereq, r.dns_port))[0] == 0
        code, out = await sh(prereq, r.dns_port)
        assert code != 0
        assert "update failed: YXDOMAIN" in out
        assert set(await listed(r)) == {"web-2"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", python.replace("port=8600", f"port={r.dns_port}"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
        assert stdout.decode().strip() == "NOERROR ['00000078']"
        assert (await listed(r))["web-1"]["ttl"] == 120
