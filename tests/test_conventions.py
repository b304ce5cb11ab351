"""Conventions a newcomer relies on, checked rather than remembered: every source file has its
row in docs/ARCHITECTURE.md's file table, and the README's layout points there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _source_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "src", "python/ferroloop"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the file list comes from git")
    return [f for f in listed if f.endswith((".rs", ".py", ".pyi"))]


def test_every_source_file_has_a_row_in_the_architecture_file_table() -> None:
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    files = _source_files()
    assert "src/event_loop.rs" in files  # the listing works
    missing = [f for f in files if f"`{f}`" not in table]
    assert missing == []


def test_the_readme_layout_points_to_the_file_table() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    assert "docs/ARCHITECTURE.md" in layout
