"""The chapters as committed: formatted by ruff to 88 columns (notebooks/ruff.toml),
which is what the book's text column shows without scrolling, no line longer than that,
and outputs cleared (the book build executes them). To format: `ruff format notebooks/`;
what is still too long (strings, comments) is shortened by hand."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LINE_LENGTH = 88  # notebooks/ruff.toml


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", "notebooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 10, (
        f"expected the ten chapters in {ROOT / 'notebooks'}, found {len(NOTEBOOKS)}"
    )


def test_chapters_are_formatted():
    result = ruff("format", "--check")
    assert result.returncode == 0, (
        f"chapters not formatted as `ruff format notebooks/` would:\n"
        f"{result.stdout}{result.stderr}"
    )


def test_no_code_line_is_wider_than_the_page():
    result = ruff("check", "--output-format", "concise")
    assert result.returncode == 0, (
        f"code lines longer than 88 columns (shorten them by hand):\n"
        f"{result.stdout}{result.stderr}"
    )


FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(\S*)")


def prose_code_lines(markdown: str):
    """The lines of code a markdown cell shows, as shown: those of fenced code blocks
    (not of directives such as ```{admonition}, whose content is prose) and of blocks
    indented by four spaces (the indent is not shown)."""
    fences = []  # the open fences: (marker, is it code)
    for line in markdown.splitlines():
        found = FENCE.match(line)
        if found and fences and found.group(1) == fences[-1][0] and not found.group(2):
            fences.pop()
        elif found and not (fences and fences[-1][1]):
            fences.append((found.group(1), not found.group(2).startswith("{")))
        elif fences and fences[-1][1]:
            yield line
        elif line.startswith("    ") and line.strip():
            yield line[4:]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_in_the_prose_fits_the_page(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    long = [
        f"cell {cell.get('id')}: {line.strip()[:60]}... ({len(line)} columns)"
        for cell in cells
        if cell["cell_type"] == "markdown"
        for line in prose_code_lines("".join(cell["source"]))
        if len(line) > LINE_LENGTH
    ]
    assert not long, (
        f"{path.name}: code in the text wider than {LINE_LENGTH} columns:\n"
        + "\n".join(long)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    with_outputs = [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code"
        and (cell["outputs"] or cell["execution_count"] is not None)
    ]
    assert not with_outputs, (
        f"{path.name}: cells {with_outputs} hold outputs; clear them before committing"
    )
