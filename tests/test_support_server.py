"""The test helpers that start servers leave none running, whatever happens to the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.redisproc import free_port
from tests.support.server import ServerProcess


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
