"""The test helpers that start servers leave none running, whatever happens to the test."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.redisproc import free_port
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue  # gone meanwhile
    return pids


def test_a_server_that_never_gets_ready_is_not_left_running() -> None:
    # Nothing listens on the store's port: the server runs, but /readyz stays 503.
    srv = ServerProcess(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(RuntimeError, match="not ready within"):
            srv.start(timeout=2)
        assert not srv.running
        assert _processes_mentioning(str(srv.data_dir)) == []
    finally:
        srv.kill()


SLEEPER = """
import time

def test_holds_a_server(server):
    print("DATA", server.data_dir, flush=True)
    time.sleep(120)
"""


def test_a_terminated_run_stops_its_servers(tmp_path: Path) -> None:
    # A run ended by SIGTERM (a CI time limit) tears its fixtures down: no server outlives it.
    (tmp_path / "test_sleeper.py").write_text(SLEEPER)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-s",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_sleeper.py"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert run.stdout is not None
        data_dir = ""
        for line in run.stdout:
            if line.startswith("DATA "):
                data_dir = line.split(" ", 1)[1].strip()
                break
        assert data_dir, "the inner run started no server"
        assert _processes_mentioning(data_dir)
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
        assert _processes_mentioning(data_dir) == []
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
