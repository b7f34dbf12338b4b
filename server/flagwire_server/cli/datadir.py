"""The data directory belongs to one ``flagwire serve`` at a time, and to its user only.

Why an OS lock and not a pid file: a pid can be reused, and a second server
that guesses "this pid is stale" kills the first one's store (issue 10).  The
kernel drops an ``flock`` when its holder dies, however it dies, so a held
lock always means a live owner and a free one always means the directory's
store (if any) was left by a dead server and may be recovered.

The lock file also records who holds it (pid, host, port) so that a second
server can say in one line which one is running.  It is read, never written,
by a server that does not get the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import orjson

__all__ = ["LOCK_FILE", "DataDirLock", "InUse", "check_port_free", "make_private"]

LOCK_FILE = "flagwire.lock"


class InUse(Exception):
    """The data directory is held by a live server, or the port is taken."""


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/flagwire.lock``, held until :meth:`release`.

    Args:
        data_dir: the directory; created 0700 when missing.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir).resolve()
        self.path = self.dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, host: str, port: int) -> None:
        """Take the lock and record this server in it.

        Raises:
            InUse: a running server holds it; the message names its pid and port.
            OSError: the directory or the file cannot be made.
        """
        if not self.dir.exists():
            self.dir.mkdir(mode=0o700, parents=True)
        # No O_TRUNC: the holder's record must survive a failed attempt to read it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise InUse(self._busy_message()) from None
        record = orjson.dumps({"pid": os.getpid(), "host": host, "port": port})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race a server taking it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    def _busy_message(self) -> str:
        holder: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = orjson.loads(self.path.read_bytes())
            if isinstance(loaded, dict):
                holder = loaded
        pid = holder.get("pid", "?")
        port = holder.get("port", "?")
        return (
            f"{self.dir} is in use by a running flagwire server (pid {pid}, port {port}); "
            "stop it first or pass another --data-dir"
        )


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`InUse` when ``host:port`` cannot be bound.

    Checked before the store starts or keys are generated, so that a busy port
    is one line on stderr rather than a log line after the first-start output.
    SO_REUSEADDR as uvicorn sets it, so a port in TIME_WAIT is not "in use".
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InUse(f"port {port} on {host} is already in use") from None
            raise InUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def make_private(path: Path) -> None:
    """Restrict a directory tree to its owner: directories 0700, files 0600.

    Data directories made by older versions were 0755/0644; tightening them on
    start means an upgrade closes the hole without a manual step.
    """
    path.chmod(0o700)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
        for name in files:
            full = os.path.join(root, name)
            if os.path.islink(full):
                continue
            with contextlib.suppress(OSError):
                # A socket keeps its own (0700) mode; files become owner-only.
                os.chmod(full, 0o600 if os.path.isfile(full) else 0o700)
