"""The client x feature table (README.md, and its source tests/clients/CONFORMANCE.md) stays true:
every cell is filled, and every test a cell names exists in tests/clients/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
HEADER = "| client | list | chat | generate | stream | tools | structured output | thinking | embeddings | vision |"
REF = re.compile(r"`(test_\w+\.py)::(test_\w+)`")


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == HEADER), None)
    if start is None:
        return []
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def defined_tests(filename: str) -> set[str]:
    path = HERE / filename
    if not path.exists():
        return set()
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def check_table(source: str, text: str) -> None:
    rows = table_rows(text)
    assert rows, f"{source} has no client conformance table (header: {HEADER})"
    columns = HEADER.count("|") - 1
    for row in rows:
        assert len(row) == columns, f"{source}: row {row[0]!r} has {len(row)} cells, expected {columns}"
        for feature, cell in zip(HEADER.strip("|").split("|")[1:], row[1:], strict=True):
            assert cell.startswith(("✅", "—")), f"{source}: {row[0]} x {feature.strip()} is {cell!r}"
            if cell.startswith("✅"):
                refs = REF.findall(cell)
                assert refs, f"{source}: {row[0]} x {feature.strip()} names no test"
                for filename, test in refs:
                    assert test in defined_tests(filename), f"{source}: {filename}::{test} does not exist"


def test_conformance_fragment_names_real_tests() -> None:
    check_table("tests/clients/CONFORMANCE.md", (HERE / "CONFORMANCE.md").read_text())


@pytest.mark.parametrize("source", ["README.md"])
def test_readme_conformance_table_names_real_tests(source: str) -> None:
    check_table(source, (ROOT / source).read_text())
