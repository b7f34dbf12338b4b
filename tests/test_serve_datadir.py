"""``flagwire serve`` owns its data directory: one server at a time, private to its user.

Issue 10, items 2 and 6: a second serve on the same directory used to kill the
first one's embedded Valkey; a busy port was reported after keys were made; the
store's files were world-readable and its Valkey listened on TCP with no password.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.builders import flag
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(120)


def valkey_pid(data_dir: Path) -> int:
    return int((data_dir / "valkey" / "flagwire-valkey.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return stat_line.rsplit(")", 1)[-1].split()[0] != "Z"


def run_serve(srv: ServerProcess, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``srv``'s command to completion (it is expected to refuse to start)."""
    return subprocess.run(
        srv.command(),
        env=srv.environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(Path(__file__).resolve().parents[1]),
    )


def test_second_serve_on_the_same_data_dir_exits_and_leaves_the_first_running(
    make_server: Callable[..., ServerProcess],
) -> None:
    first = make_server(redis_url=None)
    first.api("PUT", "/environments/production/flags/k", flag("k"))
    store_pid = valkey_pid(first.data_dir)
    lock = first.data_dir / "flagwire.lock"
    lock_before = lock.read_bytes() if lock.exists() else b"(none)"

    second = make_server(redis_url=None, data_dir=first.data_dir, start=False)
    started = time.monotonic()
    proc = run_serve(second)
    assert time.monotonic() - started < 10
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"pid {first.pid}" in lines[0]
    assert f"port {first.port}" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr

    # Nothing of the first server was touched: its store, its lock record, its writes.
    assert alive(store_pid)
    assert valkey_pid(first.data_dir) == store_pid
    assert lock.read_bytes() == lock_before
    body = first.api("PATCH", "/environments/production/flags/k", {"on": False})
    assert body["flag"]["on"] is False


def test_store_left_by_a_killed_server_is_recovered(
    make_server: Callable[..., ServerProcess],
) -> None:
    first = make_server(redis_url=None)
    first.api("PUT", "/environments/production/flags/survivor", flag("survivor", on=False))
    time.sleep(1.2)  # appendfsync everysec
    store_pid = valkey_pid(first.data_dir)
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)  # the server only: its Valkey is orphaned
    first.proc.wait()
    assert alive(store_pid)

    second = make_server(redis_url=None, data_dir=first.data_dir, port=first.port)
    assert not alive(store_pid)
    assert valkey_pid(second.data_dir) != store_pid
    doc = second.api("GET", "/environments/production/flags/survivor")
    assert doc["on"] is False


def test_port_in_use_is_one_line_before_the_store_or_keys(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = ServerProcess(None, admin_key="", data_dir=tmp_path / "data", port=port)
        started = time.monotonic()
        proc = run_serve(srv)
    assert time.monotonic() - started < 10
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"flagwire serve: port {port} on 127.0.0.1 is already in use"], proc.stderr
    assert not (tmp_path / "data" / "valkey").exists()
    assert not (tmp_path / "data" / "initial-keys.json").exists()
    assert "keys generated" not in proc.stdout + proc.stderr


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:[") : -1])
    return out


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    s.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
    print(s.recv(16).decode().strip())
except PermissionError:
    print("EACCES")
"""


def test_data_dir_is_private_and_the_store_unreachable_by_other_users(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # A data directory made by an older version, world-readable: tightened on start.
    data = tmp_path / "data"
    (data / "valkey").mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    (data / "valkey").chmod(0o755)
    old = data / "valkey" / "old-notes.txt"
    old.write_text("x")
    old.chmod(0o644)

    srv = make_server(redis_url=None, admin_key="", data_dir=data)
    keys = json.loads((data / "initial-keys.json").read_text())
    srv.admin_key = keys["admin_key"]
    srv.api("PUT", "/environments/production/flags/p", flag("p"))
    time.sleep(1.2)  # appendfsync everysec: the AOF has been written

    sock = data / "valkey" / "valkey.sock"
    seen = []
    for root, dirs, files in os.walk(data):
        for name in dirs:
            path = Path(root, name)
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        for name in files:
            path = Path(root, name)
            mode = path.lstat().st_mode
            seen.append(path.relative_to(data).as_posix())
            if stat.S_ISSOCK(mode):
                assert stat.S_IMODE(mode) & 0o077 == 0, path
            else:
                assert stat.S_IMODE(mode) == 0o600, (path, oct(mode))
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert any(p.startswith("valkey/appendonlydir/") for p in seen), seen
    assert "valkey/valkey.conf" in seen

    # No TCP listener at all: the store is reached through its socket only.
    pid = valkey_pid(data)
    assert not _socket_inodes(pid) & _listening_tcp_inodes()
    assert "\nport 0\n" in (data / "valkey" / "valkey.conf").read_text()

    # Its owner connects; another local user is refused by the kernel.
    py = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    own = subprocess.run(
        [py, "-I", "-c", CONNECT, str(sock)], capture_output=True, text=True, timeout=10
    )
    assert own.stdout.strip() == "+PONG", own.stderr
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root")
    other = subprocess.run(
        [py, "-I", "-c", CONNECT, str(sock)],
        capture_output=True,
        text=True,
        timeout=10,
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
    )
    assert other.stdout.strip() == "EACCES", other.stdout + other.stderr
