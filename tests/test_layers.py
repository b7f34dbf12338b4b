"""The layer rules in .importlinter hold: import-linter's ``lint-imports`` keeps every contract.

Why a test: the contracts (the core is pure and public, only the store speaks
Redis, nothing below the API knows Starlette, no import cycles) are only worth
having if a change that breaks one fails the run, with import-linter's report
of which import broke which contract as the message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    env = {
        **os.environ,
        # This tree's packages, not whatever the venv has installed.
        "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT / "server")]),
    }
    result = subprocess.run(
        [str(lint_imports), "--no-cache", str(ROOT / ".importlinter")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
