"""docs/architecture.md's folder table names every module in the tree, in its folder."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dnsreg"


def table_rows() -> dict[str, str]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc[doc.index("# How it is built") :]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `dnsreg/(\w*)/?` \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def modules(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")}


def test_every_module_is_in_the_architecture_table_of_its_folder() -> None:
    rows = table_rows()
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(rows) == folders | {""}, "one row per package folder, and one for the top"
    for folder, text in rows.items():
        named = set(re.findall(r"`(\w+)`", text))
        missing = modules(PACKAGE / folder) - named
        assert not missing, f"dnsreg/{folder}/: not in docs/architecture.md: {sorted(missing)}"


def test_every_module_stays_small() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 600} == {}
