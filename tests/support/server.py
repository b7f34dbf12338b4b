"""A real ``flagwire serve`` in a subprocess, and pytest fixtures around it.

``ServerProcess`` runs ``python -m flagwire_server serve --port <free>
--redis-url <url>`` with ``FLAGWIRE_ADMIN_KEY`` and ``FLAGWIRE_REDIS_PREFIX``
set, waits for ``/readyz``, and captures the process's output in a file
(``.log_path``; ``.output()`` reads it).  ``stop()`` sends SIGTERM (graceful),
``kill()`` SIGKILL, ``restart()`` stops and starts on the same port.

Fixtures (registered by ``pytest_plugins`` in ``tests/conftest.py``):

* ``server`` — one running server on the shared Redis with this test's prefix;
* ``make_server`` — a factory for more (``make_server(workers=2, env={...})``),
  all stopped at the end of the test;
* ``admin_key`` — the admin key those servers accept.

Example::

    async def test_something(server):
        async with websockets.connect(server.ws_url, additional_headers=
                                      {"Authorization": f"Bearer {sdk_key}"}) as ws: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwire.core.limits import STREAM_PATH
from tests.support.adminapi import ServerHttp
from tests.support.redisproc import free_port

__all__ = ["ServerProcess", "admin_key", "make_server", "server"]

_ROOT = Path(__file__).resolve().parents[2]


class ServerProcess(ServerHttp):
    """One ``flagwire serve`` process under a test's control.

    Args:
        redis_url: the store (None: the embedded Valkey in ``data_dir``).
        prefix: ``FLAGWIRE_REDIS_PREFIX``.
        admin_key: ``FLAGWIRE_ADMIN_KEY`` (a random one by default; "" for none,
            which makes a first start generate keys in ``data_dir``).
        workers: ``--workers``.
        env: extra environment variables (win over everything).
        data_dir: ``--data-dir`` (a temporary directory by default).
        port: the port (a free one by default; kept across restarts).
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        prefix: str = "fw",
        admin_key: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
        data_dir: str | Path | None = None,
        port: int | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.admin_key = (
            admin_key if admin_key is not None else f"fw_admin_test{secrets.token_hex(12)}"
        )
        self.workers = workers
        self.extra_env = dict(env or {})
        self._tmp = tempfile.mkdtemp(prefix="fw-server-")
        self.data_dir = Path(data_dir) if data_dir else Path(self._tmp) / "data"
        self.port = port or free_port()
        self.log_path = Path(self._tmp) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # --- addresses ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The stream endpoint, ``ws://127.0.0.1:<port>/api/v1/stream``."""
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # --- lifecycle ------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "flagwire_server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        if self.workers != 1:
            cmd += ["--workers", str(self.workers)]
        return cmd

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWIRE_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            {
                "FLAGWIRE_REDIS_PREFIX": self.prefix,
                "FLAGWIRE_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.admin_key:
            env["FLAGWIRE_ADMIN_KEY"] = self.admin_key
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start and wait until ``/readyz`` answers 200.

        A server that does not get ready is killed before the error is raised:
        callers whose clean-up only knows servers that started would leave it
        running after the test run (it is in a session of its own).
        """
        assert not self.running, "already running"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            cwd=str(_ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"flagwire serve exited with {self.proc.returncode}:\n{self.output()[-4000:]}"
                )
            status, body = self.get("/readyz", timeout=1.0)
            if status == 200:
                return
            last = f"{status} {body[:300]!r}"
            time.sleep(0.05)
        raise RuntimeError(
            f"flagwire serve not ready within {timeout}s ({last}):\n{self.output()[-4000:]}"
        )

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                code = self.proc.wait()
        self._killpg()  # stragglers (an embedded store left by a server that crashed)
        self._reap()
        return code

    def kill(self) -> None:
        """SIGKILL the server, its workers and its embedded store: what a crash looks like."""
        if self.proc is not None:
            self._killpg()  # also when the server is gone: its children may not be
            self.proc.wait()
        self._reap()

    def restart(self, timeout: float = 30.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()

    def _killpg(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


def _cleanup_prefix(redis_url: str, prefix: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        r = redis.Redis.from_url(redis_url, socket_timeout=2)
        batch = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(batch), 500):
            r.unlink(*batch[i : i + 500])
        r.close()


@pytest.fixture
def admin_key() -> str:
    return f"fw_admin_test{secrets.token_hex(12)}"


@pytest.fixture
def make_server(
    redis_url: str, redis_prefix: str, admin_key: str
) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers sharing this test's Redis prefix and admin key; all stopped at the end."""
    started: list[ServerProcess] = []

    def make(*, start: bool = True, **kwargs: Any) -> ServerProcess:
        kwargs.setdefault("prefix", redis_prefix)
        kwargs.setdefault("admin_key", admin_key)
        url = kwargs.pop("redis_url", redis_url)
        proc = ServerProcess(url, **kwargs)
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.kill()
    _cleanup_prefix(redis_url, redis_prefix)


@pytest.fixture
def server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One running ``flagwire serve`` on the shared Redis, with this test's prefix."""
    return make_server()
