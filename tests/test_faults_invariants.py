"""The invariant checker itself can fail: each breach it exists to catch is caught.

A checker that always passes would make every fault scenario worthless, so
here each invariant is broken on purpose — against a real server and real
subscribers — and :func:`check_invariants` must name the breach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from flagwire.core.limits import STREAM_PATH
from tests.support.builders import flag
from tests.support.faultkit import FAST_ENV
from tests.support.invariants import (
    Admin,
    Applied,
    RawSubscriber,
    ReadyMonitor,
    RedisView,
    check_invariants,
    poll,
    wait_key_known,
)
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

ENV = "production"


@dataclass
class Bench:
    server: ServerProcess
    admin: Admin
    view: RedisView
    sdk: str
    sub: RawSubscriber


@pytest.fixture
async def bench(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> AsyncIterator[Bench]:
    server = make_server(env=FAST_ENV)
    admin = Admin(server.url, server.admin_key)
    view = RedisView(redis_url, redis_prefix)
    for i in range(3):
        assert (await admin.put_flag(ENV, flag(f"k{i}"))).acked
    assert (await admin.delete_flag(ENV, "k2")).acked
    _id, sdk = await admin.create_key("sdk", ENV)
    await wait_key_known([server.ws_url], sdk)
    sub = RawSubscriber(server.ws_url, sdk, "sub", timeout=3).start()
    await asyncio.wait_for(sub.first.wait(), 10)
    yield Bench(server, admin, view, sdk, sub)
    await sub.close()
    await admin.aclose()
    await view.aclose()


async def _breaches(b: Bench, monitor: ReadyMonitor | None = None) -> str:
    with pytest.raises(AssertionError) as info:
        await check_invariants(b.view, [b.sub], b.admin.writes, monitor, converge_timeout=3)
    return str(info.value)


async def test_a_clean_run_passes(bench: Bench) -> None:
    await check_invariants(bench.view, [bench.sub], bench.admin.writes)


async def test_cache_differing_from_redis_is_caught(bench: Bench) -> None:
    await poll(lambda: bench.sub.version == bench.admin.writes[-1].env_version, 5, "current")
    bench.sub.flags["k0"] = {**bench.sub.flags["k0"], "on": False}
    assert "flags differ from Redis on ['k0']" in await _breaches(bench)


async def test_a_version_going_back_is_caught(bench: Bench) -> None:
    await poll(lambda: bench.sub.version == bench.admin.writes[-1].env_version, 5, "current")
    last = bench.sub.events[-1]
    bench.sub.events.append(
        dataclasses.replace(last, t=time.monotonic(), held=(last.held or 1) - 1)
    )
    bench.sub.events.append(dataclasses.replace(last, t=time.monotonic()))
    assert "version went back" in await _breaches(bench)


async def test_a_gap_never_followed_by_a_snapshot_is_caught(bench: Bench) -> None:
    await poll(lambda: bench.sub.version == bench.admin.writes[-1].env_version, 5, "current")
    bench.sub.gaps.append((time.monotonic(), "patch 99 after 5"))
    assert "never followed by a snapshot" in await _breaches(bench)


async def test_a_lost_acknowledged_change_is_caught(bench: Bench) -> None:
    w = await bench.admin.put_flag(ENV, flag("k0", on=False))
    await poll(lambda: bench.sub.version == w.env_version, 5, "current")
    # Pretend the API acknowledged a version Redis never had.
    bench.admin.writes.append(dataclasses.replace(w, env_version=(w.env_version or 0) + 50))
    assert "is not in Redis's change log" in await _breaches(bench)


async def test_a_resurrected_deleted_flag_is_caught(bench: Bench) -> None:
    await poll(lambda: bench.sub.version == bench.admin.writes[-1].env_version, 5, "current")
    last = bench.sub.events[-1]
    bench.sub.events.append(
        Applied(
            time.monotonic(),
            "snapshot",
            last.held,
            last.held,
            last.epoch,
            flags=frozenset({"k0", "k1", "k2"}),
        )
    )
    assert "deleted flag 'k2'" in await _breaches(bench)


async def test_ready_while_behind_is_caught(bench: Bench) -> None:
    # A subscriber behind a silent partition, without keepalive: it never notices.
    async with FaultProxy("127.0.0.1", bench.server.port) as proxy:
        blind = RawSubscriber(
            f"ws://127.0.0.1:{proxy.port}{STREAM_PATH}",
            bench.sdk,
            "blind",
            timeout=1.0,
            keepalive=False,
        ).start()
        await asyncio.wait_for(blind.first.wait(), 10)
        await poll(lambda: blind.ready, 5, "blind READY")
        monitor = ReadyMonitor(bench.view, [blind], slack=0.5).start()
        proxy.pause()
        assert (await bench.admin.put_flag(ENV, flag("k1", on=False))).acked
        await asyncio.sleep(2.0)
        with pytest.raises(AssertionError) as info:
            await check_invariants(
                bench.view, [blind], bench.admin.writes, monitor, converge_timeout=0.5
            )
        proxy.resume()
        await blind.close()
    assert "blind@" in str(info.value)  # not converged ...
    assert "READY at version" in str(info.value)  # ... and READY while behind


async def test_ready_monitor_stops_even_when_a_cancellation_is_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    """The partition test once hung to its timeout in ``monitor.stop()``.

    Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives as the
    awaited call completes, and redis-py sends every command through it when a
    socket timeout is set; a sampling loop stopped only by ``cancel()`` then
    samples forever.  Stopping it many times, at random points of its Redis
    reads, finds that window within a few hundred tries.
    """
    view = RedisView(redis_url, redis_prefix)
    idle = RawSubscriber("ws://127.0.0.1:9/api/v1/stream", "unused", "idle")  # never started
    rng = random.Random(13)
    try:
        for attempt in range(300):
            monitor = ReadyMonitor(view, [idle], interval=0).start()
            await asyncio.sleep(rng.uniform(0, 0.003))
            stopping = asyncio.ensure_future(monitor.stop())
            done, _ = await asyncio.wait({stopping}, timeout=3)
            assert done, f"ReadyMonitor.stop() never returned (attempt {attempt})"
    finally:
        await view.aclose()
