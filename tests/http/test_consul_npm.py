"""Issue 13 with the npm ``consul`` client, driven by a short Node script (consul_js/client.js).

The package is installed from the npm registry into a temporary directory once
per module. Without ``node``/``npm`` the test is skipped; ``.ci/run`` installs
them (Debian ``nodejs npm``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import Running

NODE = shutil.which("node")
NPM = shutil.which("npm")
SCRIPT = Path(__file__).parent / "consul_js" / "client.js"

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not on PATH (apt-get install nodejs npm)",
)


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``npm install consul`` into a fresh directory; the script runs from there."""
    assert NPM is not None
    where = tmp_path_factory.mktemp("npm-consul")
    done = subprocess.run(
        [NPM, "install", "--no-audit", "--no-fund", "--silent", "consul@2"],
        cwd=where, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"npm install consul failed:\n{done.stdout}\n{done.stderr}"
    shutil.copy(SCRIPT, where / "client.js")
    return where


async def test_npm_consul_register_list_watch(running: Running, node_modules: Path) -> None:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, "client.js", str(running.server.http_port), cwd=node_modules,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["services"] == {"web": ["primary"]}
    assert seen["passing"] == ["web-node"]
    assert seen["agent"]["web-node"]["Meta"] == {"Runtime": "node"}
    assert seen["watch"] == [["web-node"], ["web-node", "web-node-2"]]
    assert seen["after"] == ["web-node-2"]
    assert seen["leader"] == f"127.0.0.1:{running.server.http_port}"
    assert seen["kv"] is None
    # What the Node client registered is dnsreg's own: native API and DNS see it.
    instance = running.server.registry.get("web", "web-node-2")
    assert instance is not None
    assert instance.reg.ttl == 0
    reply = await running.query("web.service.local", "A")
    assert sorted(r.to_text() for rr in reply.answer for r in rr) == ["127.0.0.2"]
