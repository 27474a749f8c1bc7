"""The code's shape, checked like its behaviour: the layering contract (import-linter) and ruff.

The layers are in pyproject.toml ([tool.importlinter]) and docs/en/architecture.md; ruff's rule set and
formatting are in pyproject.toml ([tool.ruff]).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*command: str) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None:
        pytest.fail(f"{command[0]} is not installed: `pip install -e .[test]` installs it")
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_imports_keep_the_layers():
    result = run_tool("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ruff_lint_passes():
    result = run_tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_is_applied():
    result = run_tool("ruff", "format", "--check", ".")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout[-4000:]
