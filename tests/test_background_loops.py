"""Every server background loop ends when stopped, even if its cancellation is dropped.

Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives as the
awaited call completes, and redis-py sends every command through it when a
socket timeout is set (the server sets one).  A loop stopped only by
``cancel()`` then runs on and a shutdown waits for it forever.  Stopping each
loop many times at random points of its Redis calls finds that window.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flagwire_server.store.apikeys import KeyRing
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.presence import Presence
from flagwire_server.store.redisurl import connect
from flagwire_server.store.sessions import SessionStore

ATTEMPTS = 300


async def _stop_many_times(
    make: Callable[[], Awaitable[Any]], stop: Callable[[Any], Awaitable[None]], seed: int
) -> None:
    rng = random.Random(seed)
    worst = 0.0
    for attempt in range(ATTEMPTS):
        component = await make()
        await asyncio.sleep(rng.uniform(0, 0.003))
        began = time.monotonic()
        stopping = asyncio.ensure_future(stop(component))
        done, _ = await asyncio.wait({stopping}, timeout=1.0)
        if not done:
            stopping.cancel()
        assert done, f"stop() did not return within 1 s (attempt {attempt})"
        stopping.result()
        worst = max(worst, time.monotonic() - began)
    assert worst < 1.0


async def test_key_ring_poll_stops_when_a_cancellation_is_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    redis = connect(redis_url)
    try:

        async def make() -> KeyRing:
            ring = KeyRing(redis, redis_prefix, poll_interval=0)
            await ring.start()
            return ring

        await _stop_many_times(make, lambda ring: ring.stop(), seed=1)
    finally:
        await redis.aclose()


async def test_session_watcher_stops_when_a_cancellation_is_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    redis = connect(redis_url)
    try:

        async def make() -> SessionStore:
            sessions = SessionStore(redis, redis_prefix, poll_interval=0)
            await sessions.start()
            return sessions

        await _stop_many_times(make, lambda s: s.stop(), seed=2)
    finally:
        await redis.aclose()


async def test_heartbeat_stops_when_a_cancellation_is_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    redis = connect(redis_url)
    try:

        async def make() -> Presence:
            presence = Presence(redis, Keyspace(redis_prefix), "test-instance", interval=0)
            await presence.start()
            return presence

        await _stop_many_times(make, lambda p: p.stop(), seed=3)
    finally:
        await redis.aclose()
