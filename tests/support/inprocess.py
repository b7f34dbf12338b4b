"""flagwire inside the test process: the real app over ASGI, or a real uvicorn on a free port.

Why: a ``flagwire serve`` subprocess costs a Python start-up, its imports and a
``/readyz`` poll (about a second on this machine, more under load) and hides
the server's state from the test.  Tests of the admin API and the console do
not need a process of their own, only the app and a real Redis:

* :func:`asgi_app` — the app of :func:`flagwire_server.app.create_app` with its
  lifespan running (Redis connected, fan-out started) and an
  ``httpx.AsyncClient`` over ``httpx.ASGITransport``: no socket at all.  For
  async tests of HTTP routes.
* :class:`InProcessServer` — the same app under a real ``uvicorn.Server``
  with ``flagwire serve``'s own options (its WebSocket protocol, frame limits,
  proxy headers) on a free loopback port, run by a thread with an event loop
  of its own.  For sync tests, WebSocket streams, browsers and subprocesses
  (the CLI, schemathesis) that need a URL.  It has the surface of
  :class:`~tests.support.server.ServerProcess` that such tests use: ``url``,
  ``ws_url``, ``port``, ``admin_key``, ``request``, ``api``, ``stop``.

Fixtures: ``inprocess_server`` (an ``InProcessServer`` with the test's Redis
prefix and ``admin_key``) and ``asgi`` (``(app, http)`` from :func:`asgi_app`).

Tests that kill, restart or signal the server, run several workers, read its
logs or measure its process keep using ``ServerProcess``.

Example::

    async def test_routes(redis_url, redis_prefix):
        async with asgi_app(redis_url, redis_prefix) as (app, http):
            assert (await http.get("/readyz")).status_code == 200
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from flagwire_server.app import create_app
from flagwire_server.cli.serve import uvicorn_options
from flagwire_server.config import Settings
from tests.support.adminapi import ServerHttp
from tests.support.redisproc import free_port
from tests.support.server import _cleanup_prefix

__all__ = ["InProcessServer", "asgi", "asgi_app", "inprocess_server", "settings_for"]


def settings_for(
    redis_url: str,
    prefix: str,
    admin_key: str,
    env: Mapping[str, str] | None = None,
    *,
    port: int = 0,
    data_dir: Path | None = None,
) -> Settings:
    """Settings as ``ServerProcess`` sets them, from the same ``FLAGWIRE_*`` variables."""
    environ = {
        "FLAGWIRE_REDIS_URL": redis_url,
        "FLAGWIRE_REDIS_PREFIX": prefix,
        "FLAGWIRE_ADMIN_KEY": admin_key,
        "FLAGWIRE_HOST": "127.0.0.1",
        "FLAGWIRE_PORT": str(port or 8080),
        "FLAGWIRE_DATA_DIR": str(data_dir or tempfile.mkdtemp(prefix="fw-inproc-")),
        **(env or {}),
    }
    return Settings.from_env(environ)


@contextlib.asynccontextmanager
async def asgi_app(
    redis_url: str,
    prefix: str,
    admin_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client that calls it over ASGI.

    The client sends the admin key by default and has ``base_url``
    ``http://testserver``; pass ``headers={"Authorization": ...}`` per
    request to call as someone else.
    """
    key = admin_key or f"fw_admin_test{secrets.token_hex(12)}"
    app = create_app(settings_for(redis_url, prefix, key, env))
    with _gc_restored():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ) as http:
                yield app, http


@contextlib.contextmanager
def _gc_restored() -> Iterator[None]:
    """Undo the server's start-up tuning of the collector (``process.freeze_gc``) on the way
    out: it is meant for a server process, not for the test process that hosts one."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class InProcessServer(ServerHttp):
    """flagwire under a real uvicorn in a thread of this process, on a free port.

    Args:
        redis_url: the store.
        prefix: ``FLAGWIRE_REDIS_PREFIX``.
        admin_key: ``FLAGWIRE_ADMIN_KEY`` (a random one by default).
        env: more ``FLAGWIRE_*`` settings.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "fw",
        admin_key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.admin_key = admin_key or f"fw_admin_test{secrets.token_hex(12)}"
        self.port = free_port()
        self.settings = settings_for(redis_url, prefix, self.admin_key, env, port=self.port)
        self.app: Starlette | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._gc = contextlib.ExitStack()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The stream endpoint, ``ws://127.0.0.1:<port>/api/v1/stream``."""
        return f"ws://127.0.0.1:{self.port}/api/v1/stream"

    def start(self, timeout: float = 30.0) -> InProcessServer:
        """Start and wait until ``/readyz`` answers 200."""
        assert self._thread is None, "already running"
        self._gc.enter_context(_gc_restored())
        self.app = create_app(self.settings)
        options = uvicorn_options(self.settings)
        # The test process keeps its own logging (pytest captures it).
        options["log_config"] = None
        self._server = uvicorn.Server(uvicorn.Config(self.app, **options))
        self._thread = threading.Thread(target=self._run, name=f"flagwire-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"in-process flagwire did not start: {self._failure!r}")
            if self._server.started and self.request("GET", "/readyz", timeout=1.0)[0] == 200:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"in-process flagwire not ready within {timeout}s")
            time.sleep(0.02)

    def _run(self) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve())
        except BaseException as exc:  # reported by start()
            self._failure = exc

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down as SIGTERM would (streams closed with 1001, lifespan clean-up)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)
        self._server = None
        self._thread = None
        self._gc.close()

    close = stop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


# --- fixtures (registered by ``pytest_plugins`` in ``tests/conftest.py``) ---------------


@pytest.fixture
def inprocess_server(
    redis_url: str, redis_prefix: str, admin_key: str
) -> Iterator[InProcessServer]:
    """A running in-process server on the shared Redis, with this test's prefix."""
    server = InProcessServer(redis_url, prefix=redis_prefix, admin_key=admin_key).start()
    try:
        yield server
    finally:
        server.stop()
        _cleanup_prefix(redis_url, redis_prefix)


@pytest.fixture
async def asgi(
    redis_url: str, redis_prefix: str, admin_key: str
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app with its lifespan running and an ASGI client sending the admin key."""
    try:
        async with asgi_app(redis_url, redis_prefix, admin_key) as pair:
            yield pair
    finally:
        _cleanup_prefix(redis_url, redis_prefix)
