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

import httpx
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


def test_sigterm_ends_open_ofrep_event_streams_at_once(
    make_server: Callable[..., ServerProcess],
) -> None:
    """An open SSE stream does not hold a restart for the whole drain time.

    uvicorn waits for every HTTP response to finish before the lifespan's
    shutdown runs; an event stream never finishes by itself, so a browser with
    the console's OFREP stream open used to keep the old process (and its port)
    for ``FLAGWIRE_SHUTDOWN_TIMEOUT`` on every rolling restart.
    """
    drain = 8.0
    srv = make_server(env={"FLAGWIRE_SHUTDOWN_TIMEOUT": str(drain)})
    srv.api("PUT", "/environments/production/flags/f", flag("f", client_side=True))
    key = srv.api("POST", "/keys", {"name": "web", "kind": "client", "env": "production"})
    first = httpx.post(
        srv.url + "/ofrep/v1/evaluate/flags",
        json={"context": {"targetingKey": "u"}},
        headers={"Authorization": f"Bearer {key['secret']}"},
    )
    url = first.json()["eventStreams"][0]["url"]
    opened, ended = threading.Event(), threading.Event()

    def listen() -> None:
        with httpx.stream("GET", url, timeout=drain + 10) as stream:
            for _ in stream.iter_lines():
                opened.set()
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    assert opened.wait(10), "the event stream did not open"
    began = time.monotonic()
    code = srv.stop(drain + 10)
    took = time.monotonic() - began
    assert code == 0, srv.output()[-3000:]
    assert took < 2.5, f"exit took {took:.2f}s with an event stream open (drain {drain}s)"
    assert ended.wait(2), "the event stream was not ended by the shutdown"
