"""``flagwire serve``: the embedded store (when needed) and uvicorn, configured for streaming.

uvicorn settings that matter here (issue 6):

* ``ws=flagwire_server.stream.uvicorn_fence:FlagwireWebSocketProtocol`` — uvicorn's
  sans-I/O WebSocket implementation (the fastest measured) with the transport
  exposed to the fan-out and 1001 on shutdown;
* ``http=flagwire_server.stream.uvicorn_fence:FlagwireHttpProtocol`` — uvicorn's
  httptools protocol (h11's pure-Python parser was a fifth of an admin write's
  server CPU; httptools cut the CPU per write at 16 in flight by a fifth to two
  fifths in the same sitting, bench/results/write-profile.md) with a stream's
  plain upgrade handed straight to the WebSocket protocol (the fence, item 8);
* ``ws_per_message_deflate=False`` — compression doubles fan-out time and
  multiplies memory per connection;
* ``ws_max_size`` — twice the summary frame limit (bigger frames: 1009; the
  endpoint closes other frames over ``MAX_CLIENT_FRAME`` with 1009 itself);
* ``ws_ping_interval``/``ws_ping_timeout`` = ``FLAGWIRE_HEARTBEAT`` /
  ``FLAGWIRE_PING_TIMEOUT`` — a dead peer is dropped within their sum (30 s);
* ``backlog`` — room for reconnect storms;
* ``timeout_graceful_shutdown`` — SIGTERM exits within a bounded time.

``--workers N`` runs N uvicorn worker processes sharing the socket, each with
its own fan-out (each reads every environment's change log); metrics are then
aggregated through ``PROMETHEUS_MULTIPROC_DIR``.

Before anything starts: with the embedded store, the data directory's lock is
taken (a second server on it stops here, naming the first; see ``datadir.py``),
then the port is checked, so neither failure comes after the store started or
first-start keys were generated.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn

from flagwire.core.reports import MAX_SUMMARY_FRAME
from flagwire_server.cli.datadir import DataDirLock, check_port_free, make_private
from flagwire_server.config import Settings
from flagwire_server.observability import logs
from flagwire_server.process import raise_nofile
from flagwire_server.store.embedded import EmbeddedStore

__all__ = ["HTTP_PROTOCOL", "WS_PROTOCOL", "serve", "uvicorn_options"]

log = logging.getLogger("flagwire.serve")

WS_PROTOCOL = "flagwire_server.stream.uvicorn_fence:FlagwireWebSocketProtocol"
HTTP_PROTOCOL = "flagwire_server.stream.uvicorn_fence:FlagwireHttpProtocol"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run`` (see the module docstring)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": HTTP_PROTOCOL,
        "ws": WS_PROTOCOL,
        "ws_per_message_deflate": False,
        # Summaries up to twice their limit are read (and dropped, counted, without
        # closing the stream); bigger frames close it with 1009 before they are buffered.
        "ws_max_size": 2 * MAX_SUMMARY_FRAME,
        "ws_ping_interval": settings.heartbeat,
        "ws_ping_timeout": settings.ping_timeout,
        "backlog": settings.backlog,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_timeout)),
        "lifespan": "on",
        "log_config": logs.log_config(settings),
        "server_header": False,
        "proxy_headers": True,
    }


@contextlib.contextmanager
def _signals_return() -> Iterator[None]:
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM (blocking)."""
    logs.configure(settings)
    raise_nofile()
    embedded: EmbeddedStore | None = None
    lock: DataDirLock | None = None
    metrics_dir: str | None = None
    try:
        if not settings.redis_url:
            lock = DataDirLock(settings.data_dir)
            lock.acquire(host=settings.host, port=settings.port)
        check_port_free(settings.host, settings.port)
        if lock is not None:
            make_private(lock.dir)
            embedded = EmbeddedStore(settings.data_dir)
            settings = settings.with_(redis_url=embedded.start())
        log.info(
            "starting flagwire",
            extra={
                "host": settings.host,
                "port": settings.port,
                "workers": settings.workers,
                "embedded_store": embedded is not None,
            },
        )
        options = uvicorn_options(settings)
        if settings.workers > 1:
            if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                metrics_dir = tempfile.mkdtemp(prefix="flagwire-metrics-")
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            os.environ.update(settings.to_env())
            uvicorn.run(
                "flagwire_server.app:create_app_from_env",
                factory=True,
                workers=settings.workers,
                **options,
            )
        else:
            from flagwire_server.app import create_app

            server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
            # uvicorn re-raises the signal that stopped it once it has shut down,
            # with the handler it found installed: the default one would kill this
            # process before the embedded store is stopped, so install one that
            # just lets run() return.
            with _signals_return():
                server.run()
    finally:
        if embedded is not None:
            embedded.stop()
        if lock is not None:
            lock.release()
        if metrics_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(metrics_dir)
