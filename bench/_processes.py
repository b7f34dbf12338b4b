"""The processes a benchmark starts: a private Redis, ``flagwire serve``, the floor server.

Each runs on a free loopback port, optionally pinned to a CPU set, and is
stopped (with its children) on exit; :func:`rss_tree` reads the memory of a
process and its descendants.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tests.support.redisproc import RedisProcess, free_port

from bench._harness import ROOT

__all__ = [
    "FlagwireServer",
    "FloorServer",
    "cpu_seconds",
    "minor_faults",
    "redis_server",
    "rss_tree",
    "wait_port",
]


def rss_tree(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants, as the kernel counts it.

    Read from ``/proc/PID/stat`` (utime + stime, in clock ticks): the server's
    own cost, which the clients sharing a core cannot distort.
    """
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            t = q.cpu_times()
            total += t.user + t.system
    return total


def minor_faults(pid: int) -> int:
    """Minor page faults of a process and its live descendants (``/proc/PID/stat``).

    A hot path that maps fresh memory (an allocation above glibc's mmap
    threshold, say) shows here as a few faults per client per change.
    """
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{q.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    return total


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def _pinned(cpu_set: set[int] | None) -> Any:
    if not cpu_set:
        return None
    return lambda: os.sched_setaffinity(0, cpu_set)


class FloorServer:
    """The bare broadcast server (``bench/_floor.py``) in its own process."""

    def __init__(self, *, mode: str = "write", cpu_set: set[int] | None = None) -> None:
        self.port = free_port()
        self.control_port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench._floor",
                "--port",
                str(self.port),
                "--control-port",
                str(self.control_port),
                "--mode",
                mode,
            ],
            cwd=ROOT,
            preexec_fn=_pinned(cpu_set),
        )
        wait_port(self.port, proc=self.proc)
        wait_port(self.control_port, proc=self.proc)
        self.ctl = socket.create_connection(("127.0.0.1", self.control_port))
        self.ctl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.ctl.makefile("rb")
        self.url = f"ws://127.0.0.1:{self.port}/"

    def send(self, payload: bytes) -> tuple[int, int]:
        """Broadcast ``payload``; (connections, nanoseconds the send loop took)."""
        self.ctl.sendall(payload + b"\n")
        line = self.reader.readline().split()
        return int(line[1]), int(line[2])

    def freeze(self) -> None:
        self.ctl.sendall(b"gc\n")
        self.reader.readline()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.ctl.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> FloorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FlagwireServer:
    """``flagwire serve`` on a free port against ``redis_url``, pinned to ``cpu_set``."""

    def __init__(
        self,
        redis_url: str,
        *,
        workers: int = 1,
        cpu_set: set[int] | None = None,
        admin_key: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.workers = workers
        self.cpu_set = cpu_set
        self.admin_key = admin_key or "fw_admin_bench_" + secrets.token_urlsafe(24)
        self.port = port or free_port()
        self.extra_env = env or {}
        self.log_path = (
            log or Path(os.environ.get("TMPDIR", "/tmp")) / f"flagwire-bench-{self.port}.log"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("flagwire")
        return [
            str(exe),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--redis-url",
            self.redis_url,
            "--workers",
            str(self.workers),
        ]

    def start(self, timeout: float = 30.0) -> FlagwireServer:
        env = {
            **os.environ,
            "FLAGWIRE_ADMIN_KEY": self.admin_key,
            "FLAGWIRE_LOG_FORMAT": "json",
            "FLAGWIRE_LOG_LEVEL": "warning",
            # the admin rate limit would throttle the benchmark's own writes
            "FLAGWIRE_RATE_LIMIT": "100000000",
            # every simulated client shares one key and one address (127.0.0.1)
            "FLAGWIRE_MAX_STREAMS_PER_KEY": "1000000",
            "FLAGWIRE_MAX_STREAMS_PER_IP": "1000000",
            **self.extra_env,
        }
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_pinned(self.cpu_set),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"flagwire serve exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"flagwire serve not ready after {timeout}s; log: {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_tree(self.pid) if self.proc else 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        with contextlib.suppress(AttributeError):
            self._log.close()

    def restart(self) -> FlagwireServer:
        self.stop()
        return self.start()

    def __enter__(self) -> FlagwireServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def redis_server(
    cpu_set: set[int] | None = None, appendonly: bool = True
) -> Iterator[RedisProcess]:
    """A private Redis on a free port (append-only, like production)."""
    proc = RedisProcess(appendonly=appendonly, extra_args=["--appendfsync", "everysec"])
    proc.start()
    if cpu_set:
        assert proc.proc is not None
        os.sched_setaffinity(proc.proc.pid, cpu_set)
    try:
        yield proc
    finally:
        proc.close()
