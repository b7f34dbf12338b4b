"""Lint, format and type problems fail the test run, not only ``scripts/check``.

CI runs ``scripts/test`` (pytest) and nothing else, so without these a tree
that ruff or mypy reject would pass CI.  The tools come from the venv that
runs the tests (the ``dev`` extra); each failure shows the tool's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TREES = ("client", "server", "tests", "bench")


def _run(tool: str, *args: str) -> None:
    exe = BIN / tool
    if not exe.exists():
        pytest.skip(f"{tool} is not installed in {BIN} (it comes with the dev extra)")
    # mypy reads its search path from pyproject (mypy_path); a MYPYPATH from the
    # caller's shell would put another tree first.
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    proc = subprocess.run(
        [str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    if proc.returncode != 0:
        command = " ".join((tool, *args))
        pytest.fail(f"{command} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff_check() -> None:
    _run("ruff", "check", *TREES)


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", *TREES)


def test_mypy() -> None:
    _run("mypy")
