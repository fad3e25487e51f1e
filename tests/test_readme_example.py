"""The README's first Python client example runs as pasted against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import server_process

README = Path(__file__).resolve().parent.parent / "README.md"


def first_client_example() -> str:
    text = README.read_text()
    section = text[text.index("## The Python client") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under 'The Python client'"
    return match.group(1)


def test_the_first_client_example_runs(tmp_path: Path) -> None:
    code = first_client_example()
    assert "asyncio.run(main())" in code  # no top-level `async with`
    with server_process(tmp_path) as server:
        # Only the addresses change: the server listens on free ports here.
        code = code.replace("http://127.0.0.1:8500", server.base)
        code = code.replace("127.0.0.1:8600", f"127.0.0.1:{server.dns_port}")
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "1"  # one web instance registered
    assert int(lines[1]) >= 1  # a revision
    assert lines[2] == "1"  # the blocking read came back with it, not NotFound
    assert result.stderr == ""


@pytest.mark.parametrize("bad", ["async with", "await "])
def test_the_example_has_no_top_level_await(bad: str) -> None:
    top_level = [line for line in first_client_example().splitlines() if not line.startswith(" ")]
    assert not any(line.startswith(bad) for line in top_level)
