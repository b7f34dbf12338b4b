"""The ``flagwire`` command run by tests: in this process (Typer's runner) or as a process.

Why in-process: a ``flagwire`` process spends most of its life importing
(about 0.7 s of CPU each, and the CLI tests run over a hundred commands);
the command's code, its HTTP calls to a real server, its output and its exit
status are the same either way.  The console script itself (``flagwire`` on
PATH, its entry point) keeps tests of its own that run it as a process
(``process=True``): ``serve --help``, ``watch`` following a stream.

Example::

    out = run_cli(live.url, live.admin_key, "flags", "list", "-e", env).stdout
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

from typer.testing import CliRunner

from flagwire_server.cli.main import app

__all__ = ["FLAGWIRE", "run_cli"]

#: The installed console script, beside the interpreter running the tests.
FLAGWIRE = Path(sys.executable).parent / "flagwire"


def run_cli(
    url: str,
    admin_key: str,
    *args: str,
    ok: bool = True,
    process: bool = False,
    timeout: float = 20,
) -> subprocess.CompletedProcess[str]:
    """Run ``flagwire ARGS`` with ``FLAGWIRE_URL`` and ``FLAGWIRE_ADMIN_KEY`` set.

    Args:
        ok: assert that it exits with 0 (showing its stderr if not).
        process: run the console script as a process (``timeout`` applies)
            instead of the command in this process.

    Returns:
        what a process would give: exit status, stdout and stderr, apart; a
        command that raises has its traceback on stderr and status 1, as the
        script would.
    """
    env = {"FLAGWIRE_URL": url, "FLAGWIRE_ADMIN_KEY": admin_key}
    if process:
        proc = subprocess.run(
            [str(FLAGWIRE), *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    else:
        result = CliRunner().invoke(app, list(args), env=env, prog_name="flagwire")
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            assert result.exc_info is not None
            stderr += "".join(traceback.format_exception(*result.exc_info))
        proc = subprocess.CompletedProcess(
            ["flagwire", *args], result.exit_code, result.stdout, stderr
        )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc
