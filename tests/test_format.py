"""The repository's Python is in ruff's format (ruff.toml) and free of what ruff's F and E9 rules
find (undefined names, unused imports, syntax errors). ruff comes with the ``test`` extra."""

import subprocess
import sys

from conftest import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_code_is_formatted():
    run = ruff("format", "--check", ".")
    assert run.returncode == 0, f"run `ruff format .` (pip install -e .[test] installs ruff):\n{run.stdout}{run.stderr}"


def test_no_undefined_names_or_unused_imports():
    run = ruff("check", "--select", "F,E9", ".")
    assert run.returncode == 0, run.stdout + run.stderr
