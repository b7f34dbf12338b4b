"""A SIGTERM'd server with open streams and a busy change log exits promptly.

Its background loops (change readers, heartbeat, key ring, ...) poll Redis with
a command timeout set, which on Python 3.11 can swallow the cancellation meant
to stop them (see ``flagwire_server.background``); a server once took over
20 s to exit.  The exit must stay within the shutdown timeout plus a margin.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from tests.support.builders import flag
from tests.support.server import ServerProcess
from tests.support.streamclient import StreamClient

pytestmark = pytest.mark.timeout(150)

SHUTDOWN_TIMEOUT_S = 2.0
ROUNDS = 3


def _write_until(writer: ServerProcess, stop: threading.Event, env: str) -> int:
    """Change flags through another process so the change log keeps moving."""
    n = 0
    while not stop.is_set():
        writer.api("PUT", f"/environments/{env}/flags/busy-{n % 20}", flag(f"busy-{n % 20}"))
        n += 1
    return n


async def test_sigterm_with_open_streams_and_a_busy_change_log_exits_within_the_timeout(
    make_server: Callable[..., ServerProcess],
) -> None:
    settings = {"FLAGWIRE_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S)}
    writer = make_server(env=settings)
    envs = ["production"]
    for env in ("loops-a", "loops-b"):
        writer.api("POST", "/environments", {"key": env})
        envs.append(env)
    for round_ in range(ROUNDS):
        srv = make_server(env=settings)
        clients = [
            await StreamClient(srv.ws_url, srv.admin_key, env=env).connect()
            for env in envs
            for _ in range(3)
        ]
        stop = threading.Event()
        writers = [
            asyncio.ensure_future(asyncio.to_thread(_write_until, writer, stop, env))
            for env in envs
        ]
        try:
            await asyncio.sleep(0.5)
            assert not any(w.done() for w in writers)  # a writer that failed early
            began = time.monotonic()
            code = await asyncio.to_thread(srv.stop, SHUTDOWN_TIMEOUT_S + 10)
            took = time.monotonic() - began
        finally:
            stop.set()
            written = sum(await asyncio.gather(*writers))
        assert written > 0
        assert code == 0, srv.output()[-3000:]
        assert took < SHUTDOWN_TIMEOUT_S + 2, (
            f"round {round_}: exit took {took:.2f}s\n{srv.output()[-3000:]}"
        )
        for c in clients:
            assert await c.wait_closed(5) == 1001
