"""Fenced code blocks and links of README.md and docs/*.md, for tests/test_docs.py.

A block's info string is its language and then words that say what the tests do with it:

* ``session``: a terminal session (``$ command`` lines, then what it prints), run
  against a fresh server on free loopback ports; the output must match what is shown,
  where ``...`` stands for any text (a line of its own: any number of lines) and runs of
  spaces are one space.
* ``file=docs/examples/NAME``: the block is that file, verbatim; a test runs the file.
* ``tested=tests/PATH.py``: a test of its own runs the block (docs/update.md's nsupdate
  examples, run by tests/dns/test_update_docs.py against a server with their key).
* ``illustrative``: not run (it needs another machine, another program's daemon or a
  long wait), but checked by the checker its language has (``tomllib``, ``json``,
  ``compile``, ``bash -n``, ``node --check``, ``check=nsd-checkconf`` …), and ``config``
  TOML is loaded by dnsreg's own config loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    tags: frozenset[str]
    attrs: dict[str, str] = field(hash=False)
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, ticks, info = match.groups()
        words = info.split()
        lang = words[0] if words else ""
        tags = frozenset(w for w in words[1:] if "=" not in w)
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        found.append(
            Block(path, i - len(body), lang, tags, attrs, "\n".join(body) + "\n" if body else "")
        )
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path)]


def prose(path: Path) -> str:
    """The text outside fenced blocks (where headings and links are)."""
    out: list[str] = []
    inside: str | None = None
    for line in path.read_text().splitlines():
        match = _FENCE.match(line)
        if inside is None and match:
            inside = match.group(2)
            continue
        if inside is not None:
            if line.strip() == inside:
                inside = None
            continue
        out.append(line)
    return "\n".join(out)


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen: dict[str, int] = {}
    ids: set[str] = set()
    for line in prose(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def links(path: Path) -> list[str]:
    text = prose(path)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans hold no links
    inline = re.findall(r"\]\(([^)\s]+)\)", text)
    reference = re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)
    return inline + reference


# --------------------------------------------------------------------------------------
# Sessions


@dataclass
class Step:
    command: str
    expected: list[str]


def session_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            steps[-1].command += "\n" + line
        elif line.startswith("$ "):
            steps.append(Step(line[2:], []))
        else:
            assert steps, f"output before the first command: {line!r}"
            steps[-1].expected.append(line)
            continue
        continuing = line.endswith("\\")
    return steps


def _normal(line: str) -> str:
    return " ".join(line.split())


def output_matches(expected: list[str], output: str) -> bool:
    """Does ``output`` read as ``expected`` shows it (``...`` = any text, spaces folded)?"""
    pattern = ""
    for line in (_normal(e) for e in expected):
        if not line:
            continue
        if line == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += r"[^\S\n]*".join(
                r"[^\n]*?" if part == "..." else re.escape(part)
                for part in re.split(r"(\.\.\.)", line)
                if part
            )
            pattern += r"\n"
    lines = [_normal(line) for line in output.splitlines()]
    text = "".join(line + "\n" for line in lines if line)
    return re.fullmatch(pattern, text) is not None
