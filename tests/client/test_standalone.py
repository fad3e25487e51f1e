"""The client side stands alone: importing it loads none of the server packages."""

from __future__ import annotations

import subprocess
import sys

SERVER_SIDE = ("dnsreg.dns", "dnsreg.http", "dnsreg.health", "dnsreg.store", "dnsreg.app")


def test_documented_imports_load_no_server_code() -> None:
    code = (
        "import sys\n"
        "from dnsreg.client import Client, Lease, InstanceSpec, DnsregError, NotFound\n"
        "import dnsreg.client.commands, dnsreg.client.run, dnsreg.client.registrar\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({SERVER_SIDE!r}))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"server modules loaded by the client: {out}"
