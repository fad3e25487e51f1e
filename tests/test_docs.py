"""Every example in README.md and docs/*.md runs (or is checked), and every link resolves.

How a block is treated is written in its info string (see tests/docs_blocks.py): a
``session`` runs against a real server on free loopback ports and must print what the
document shows; a ``file=`` block is a file in docs/examples/ that a test runs; an
``illustrative`` block is checked by its language's checker.
"""

from __future__ import annotations

import ast
import configparser
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dnsreg.client.service_files import parse_service_file
from dnsreg.config import load_config
from tests.docs_blocks import (
    DOCS,
    ROOT,
    Block,
    all_blocks,
    anchors,
    links,
    output_matches,
    prose,
    session_steps,
)
from tests.helpers import spawn_server
from tests.test_packaging import verify_unit

BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "docs" / "examples"
BLOCKS = all_blocks()

# What the session server is started with: the settings the documents' sessions rely on
# (the transfer and TSIG examples of docs/dns.md, Consul's names of docs/api.md).
SESSION_CONFIG = """\
allow_transfer = ["127.0.0.1/32"]
alt_domain = "consul"

[[tsig_keys]]
name = "xfr-key"
algorithm = "hmac-sha256"
secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
rights = ["transfer"]
"""


def ids(found: list[Block]) -> list[str]:
    return [b.where for b in found]


def kind(block: Block) -> str:
    kinds = [k for k in ("session", "illustrative") if k in block.tags]
    kinds += [k for k in ("file", "tested") if k in block.attrs]
    assert len(kinds) == 1, f"{block.where}: say session, illustrative, file= or tested="
    return kinds[0]


def test_there_are_examples_of_every_kind() -> None:
    kinds = {kind(b) for b in BLOCKS}
    assert kinds == {"session", "illustrative", "file", "tested"}
    assert len(DOCS) >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=ids(BLOCKS))
def test_every_block_says_what_it_is(block: Block) -> None:
    assert block.lang, f"{block.where}: a block needs a language"
    kind(block)


TESTED = [b for b in BLOCKS if "tested" in b.attrs]


@pytest.mark.parametrize("block", TESTED, ids=ids(TESTED))
def test_a_block_tested_elsewhere_names_a_test_that_reads_its_document(block: Block) -> None:
    test = ROOT / block.attrs["tested"]
    assert test.is_file(), f"{block.where}: no {block.attrs['tested']}"
    assert block.path.name in test.read_text(), f"{test.name} does not read {block.path.name}"


# --------------------------------------------------------------------------------------
# Files: the document shows the file verbatim, and the file runs.

FILE_BLOCKS = [b for b in BLOCKS if "file" in b.attrs]


@pytest.mark.parametrize("block", FILE_BLOCKS, ids=ids(FILE_BLOCKS))
def test_a_file_block_is_the_file(block: Block) -> None:
    path = ROOT / block.attrs["file"]
    assert path.parent == EXAMPLES, f"{block.where}: examples live in docs/examples/"
    assert block.text == path.read_text(), f"{block.where}: differs from {path.name}"


def test_every_example_file_is_shown_in_a_document() -> None:
    shown = {ROOT / b.attrs["file"] for b in FILE_BLOCKS}
    assert set(EXAMPLES.iterdir()) == shown


def on_free_ports(text: str, http_port: int, dns_port: int) -> str:
    """The documents use the default ports; the test servers listen on free ones."""
    text = re.sub(r"\b(127\.0\.0\.1|localhost):8500\b", rf"\g<1>:{http_port}", text)
    text = text.replace("port=8500", f"port={http_port}")
    text = text.replace("127.0.0.1:8600", f"127.0.0.1:{dns_port}")
    return text.replace("-p 8600", f"-p {dns_port}")


def run_against_server(tmp_path: Path, argv: list[str], source: Path) -> str:
    (tmp_path / "zones").mkdir(exist_ok=True)
    server = spawn_server(tmp_path)
    try:
        script = tmp_path / source.name
        script.write_text(on_free_ports(source.read_text(), server.http_port, server.dns_port))
        result = subprocess.run(
            [*argv, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_the_python_client_example_runs_as_pasted(tmp_path: Path) -> None:
    example = EXAMPLES / "client.py"
    top_level = [line for line in example.read_text().splitlines() if not line.startswith(" ")]
    assert not any(line.startswith(("async with", "await ")) for line in top_level)
    lines = run_against_server(tmp_path, [sys.executable], example).split()
    assert lines[0] == "1"  # one web instance registered
    assert int(lines[1]) >= 1  # the revision the read saw
    assert lines[2] == "1"  # the blocking read came back with it, not NotFound


def test_the_watch_and_resolve_example_prints_what_the_document_shows(tmp_path: Path) -> None:
    out = run_against_server(tmp_path, [sys.executable], EXAMPLES / "watch_and_resolve.py")
    assert out.splitlines() == [
        "registered web-1 at revision 1",
        "web-1.web.service.local 8080 0 1 ('10.0.0.5',)",
        "2 deregistered web web-1",
    ]
    doc = (ROOT / "docs" / "watch-and-clients.md").read_text()
    assert "\n".join(out.splitlines()) in doc


def test_the_py_consul_example_runs_as_pasted(tmp_path: Path) -> None:
    out = run_against_server(tmp_path, [sys.executable], EXAMPLES / "py_consul.py").split("\n")
    assert out[0] == "web-1 10.0.0.5:8080 ['primary']"
    assert out[1] == "gone"


# --------------------------------------------------------------------------------------
# Sessions: run as a user would type them, against a fresh server.

SESSIONS = [b for b in BLOCKS if "session" in b.tags]


# The programs sessions call, and the Debian package of each.
TOOLS = {"curl": "curl", "dig": "bind9-dnsutils", "kdig": "knot-dnsutils", "openssl": "openssl"}


@pytest.mark.dig
@pytest.mark.parametrize("block", SESSIONS, ids=ids(SESSIONS))
def test_a_session_prints_what_the_document_shows(block: Block, tmp_path: Path) -> None:
    for tool, package in TOOLS.items():
        if re.search(rf"(^|[\s|(]){tool} ", block.text, re.M) and shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed ({package})")
    (tmp_path / "zones").mkdir()
    for zone in (ROOT / "zones").glob("*.zone"):  # what `make run` serves
        shutil.copy(zone, tmp_path / "zones")
    (tmp_path / "dnsreg.toml").write_text(SESSION_CONFIG)
    server = spawn_server(tmp_path, "--config", str(tmp_path / "dnsreg.toml"))
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DNSREG_API=server.base,
    )
    env.pop("DNSREG_TOKEN", None)
    try:
        for step in session_steps(block.text):
            command = on_free_ports(step.command, server.http_port, server.dns_port)
            result = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=60,
                cwd=tmp_path, env=env,
            )  # fmt: skip
            assert result.returncode == 0, f"{block.where}: $ {step.command}\n{result.stderr}"
            assert output_matches(step.expected, result.stdout), (
                f"{block.where}: $ {step.command}\nthe document shows:\n"
                + "\n".join(step.expected)
                + f"\nit printed:\n{result.stdout}"
            )
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


# --------------------------------------------------------------------------------------
# Illustrative blocks: checked by what their language has.

ILLUSTRATIVE = [b for b in BLOCKS if "illustrative" in b.tags]
UNCHECKED = {"text", "yaml"}  # no checker installed (consul-template, unbound, SSE frames)


def shell_lines(block: Block) -> str:
    """A console block's commands (after ``$``), or a shell block as it stands."""
    if block.lang != "console":
        return block.text
    return "\n".join(step.command for step in session_steps(block.text)) + "\n"


def check_externally(tool: str, block: Block, tmp_path: Path, suffix: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    path = tmp_path / f"example{suffix}"
    path.write_text(block.text)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{block.where}: {tool}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("block", ILLUSTRATIVE, ids=ids(ILLUSTRATIVE))
def test_an_illustrative_block_is_well_formed(block: Block, tmp_path: Path) -> None:
    check = block.attrs.get("check")
    if check == "nsd-checkconf":
        check_externally("nsd-checkconf", block, tmp_path, ".conf")
    elif check == "named-checkconf":
        check_externally("named-checkconf", block, tmp_path, ".conf")
    elif check == "systemd-dropin":  # a drop-in for contrib/systemd/dnsreg.service
        if shutil.which("systemd-analyze") is None:
            pytest.skip("systemd-analyze not installed (Debian package systemd)")
        drop_in = block.text.replace("/usr/local/bin/dnsreg", str(BIN / "dnsreg"))
        (tmp_path / "dnsreg.service.d").mkdir()
        (tmp_path / "dnsreg.service.d" / "override.conf").write_text(drop_in)
        result = verify_unit(tmp_path, "dnsreg.service", "dnsreg.service")
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr
    elif check is not None:
        raise AssertionError(f"{block.where}: unknown check={check}")
    elif block.lang == "toml":
        data = tomllib.loads(block.text)
        if "config" in block.tags:  # a dnsreg.toml: dnsreg's own loader accepts it
            (tmp_path / "dnsreg.toml").write_text(block.text)
            load_config({"config": str(tmp_path / "dnsreg.toml")}, env={})
        elif "service-file" in block.tags:  # a registrar file
            assert parse_service_file("example.toml", block.text, hostname="host")
        else:
            assert data
    elif block.lang == "json":
        text = block.text.strip()
        json.loads(text if text.startswith(("{", "[")) else "{" + text + "}")
    elif block.lang == "python":
        compile(block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    elif block.lang in ("sh", "console"):
        result = subprocess.run(
            ["bash", "-n"], input=shell_lines(block), capture_output=True, text=True
        )
        assert result.returncode == 0, f"{block.where}: {result.stderr}"
    elif block.lang == "js":
        if shutil.which("node") is None:
            pytest.skip("node not installed (nodejs)")
        (tmp_path / "example.js").write_text(f"(async () => {{\n{block.text}}})();\n")
        result = subprocess.run(
            ["node", "--check", str(tmp_path / "example.js")], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{block.where}: {result.stderr}"
    elif block.lang == "ini":
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(block.text)
        assert parser.sections(), f"{block.where}: no [section]"
    else:
        assert block.lang in UNCHECKED, f"{block.where}: no checker for {block.lang!r}"


# --------------------------------------------------------------------------------------
# Links


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for link in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto: …
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links"


def test_the_readme_links_every_document() -> None:
    readme = set(links(ROOT / "README.md"))
    for doc in DOCS[1:]:
        assert f"docs/{doc.name}" in readme, doc.name


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


# --------------------------------------------------------------------------------------
# The configuration reference is complete


def test_the_configuration_reference_names_every_setting_and_flag() -> None:
    from dataclasses import fields

    from dnsreg.config import Config

    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Configuration") : text.index("## Seeing what is served")]
    missing = [
        f.name
        for f in fields(Config)
        if f"`{f.name}`" not in section and f"`DNSREG_{f.name.upper()}`" not in section
    ]
    assert missing == [], "settings missing from docs/operations.md#configuration"
    help_text = subprocess.run(
        [str(BIN / "dnsreg"), "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = set(re.findall(r"^ {2}(--[a-z][a-z-]*[a-z])", help_text, re.M)) - {"--help"}
    assert len(flags) > 20
    assert sorted(f for f in flags if f"`{f}" not in section and f"{f}`" not in section) == []


def test_the_metrics_table_names_what_a_server_exports(tmp_path: Path) -> None:
    import urllib.request

    (tmp_path / "zones").mkdir()
    server = spawn_server(tmp_path)
    try:
        with urllib.request.urlopen(f"{server.base}/metrics", timeout=10) as resp:
            scrape = resp.read().decode()
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
    exported = {
        re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"^(dnsreg_\w+)", scrape, re.M)
    }
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("### Metrics") : text.index("## Limits, the data directory")]
    documented = set(re.findall(r"`(dnsreg_\w+)", table))
    assert sorted(exported - documented) == [], "exported but not in docs/operations.md"
    # Rate limiting's counters appear only when it is on, and a labelled series once it
    # has counted something (a fresh server has answered no query yet).
    labelled = set(re.findall(r"`(dnsreg_\w+)\{", table))
    off = {"dnsreg_rrl_dropped_total", "dnsreg_rrl_slipped_total"} | labelled
    assert sorted(documented - exported - off) == [], "documented but not exported"


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_a_document_renders_with_one_title_nested_headings_and_whole_tables(doc: Path) -> None:
    lines = prose(doc).splitlines()
    levels = [len(m.group(1)) for line in lines if (m := re.match(r"^(#{1,6}) ", line))]
    assert levels[0] == 1, "the title comes first"
    assert levels.count(1) == 1, "one # title"
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), "a heading skips a level"
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+$", lines[i + 1]):
            cells = len(re.split(r"(?<!\\)\|", line))
            rows = itertools.takewhile(lambda row: row.startswith("|"), lines[i + 1 :])
            assert all(len(re.split(r"(?<!\\)\|", row)) == cells for row in rows), line
