"""flagwire.sync: the thread-backed client, against a real server, and across fork()."""

from __future__ import annotations

import os
import select
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from flagwire import BackoffSettings, ClientStatus, FlagChange
from flagwire.sync import SyncFlagClient
from tests.support.builders import flag
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(60)
CTX = {"key": "u1"}


def environment(server: ServerProcess) -> tuple[str, str]:
    env = f"e{uuid.uuid4().hex[:8]}"
    server.api("POST", "/environments", {"key": env})
    sdk = server.api("POST", "/keys", {"name": "sync tests", "kind": "sdk", "env": env})["secret"]
    server.api("POST", f"/environments/{env}/flags", flag("a"))
    return env, sdk


def until(predicate: object, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_sync_client_follows_changes_from_other_threads(server: ServerProcess) -> None:
    env, sdk = environment(server)
    with SyncFlagClient(server.url, sdk, start_timeout=5) as flags:
        assert flags.start_status is ClientStatus.READY
        seen: list[FlagChange] = []
        flags.on_change(seen.append)
        results: list[bool] = []

        def reader() -> None:
            for _ in range(1000):
                results.append(flags.bool_variation("a", CTX, False))

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        server.api("PATCH", f"/environments/{env}/flags/a?wait=5", {"on": False})
        for t in threads:
            t.join()
        assert until(lambda: flags.bool_variation("a", CTX, True) is False)
        assert until(lambda: [c.key for c in seen] == ["a"])
        assert len(results) == 4000
        assert flags.wait_for_status(timeout=1) is ClientStatus.READY
    assert flags.status is ClientStatus.CLOSED
    assert not flags._thread.is_alive()
    assert flags.bool_variation("a", CTX, True) is False  # last data still answers


def test_sync_client_works_in_a_forked_child(server: ServerProcess) -> None:
    env, sdk = environment(server)
    flags = SyncFlagClient(
        server.url, sdk, start_timeout=5, backoff=BackoffSettings(initial=0.05, cap=0.5)
    )
    assert flags.bool_variation("a", CTX, False) is True
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked after --preload
        code = 10
        try:
            os.close(to_parent_r)
            code = 11
            if flags.bool_variation("a", CTX, False) is not True:  # inherited data
                os._exit(code)
            code = 12
            if flags.wait_for_status(ClientStatus.READY, timeout=10) is not ClientStatus.READY:
                os._exit(code)
            code = 13
            if flags.client.stats["connections"] != 1:  # its own new subscription
                os._exit(code)
            os.write(to_parent_w, b"ready")
            code = 14
            if not until(lambda: flags.bool_variation("a", CTX, True) is False, 10):
                os._exit(code)
            flags.close()
            code = 0
        finally:
            os._exit(code)
    os.close(to_parent_w)
    try:
        ready, _, _ = select.select([to_parent_r], [], [], 15)
        assert ready, "the child did not get ready"
        assert os.read(to_parent_r, 5) == b"ready"
        server.api("PATCH", f"/environments/{env}/flags/a", {"on": False})
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's own subscription was not disturbed by the child
        assert until(lambda: flags.bool_variation("a", CTX, True) is False)
        assert flags.status is ClientStatus.READY
        assert flags.stats["connections"] == 1
    finally:
        os.close(to_parent_r)
        flags.close()


def test_sync_client_offline(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_bytes(orjson.dumps({"new-checkout": True, "theme": "dark"}))
    with SyncFlagClient(offline_path=path) as flags:
        assert flags.status is ClientStatus.READY
        assert flags.bool_variation("new-checkout", CTX, False) is True
        assert flags.string_variation("theme", CTX, "") == "dark"
        assert flags.all_flags(CTX) == {"new-checkout": True, "theme": "dark"}
