"""FlagClient against a real ``flagwire serve``, real Redis and real sockets.

Propagation to many clients with ``?wait`` acknowledgements, a server killed
and restarted, a refused key, a network partition through the fault proxy,
a persisted snapshot when the server is down at start-up, and the spread of
reconnections after a restart.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from flagwire import AuthenticationError, BackoffSettings, ClientStatus, FlagClient, RefusedError
from flagwire_server.store.documents import Store
from tests.support.builders import flag
from tests.support.polling import poll
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(90)

CTX = {"key": "u1"}
FAST = BackoffSettings(initial=0.1, cap=1.0, going_away=0.5)


@dataclass
class World:
    server: ServerProcess
    env: str
    sdk: str
    store: Store

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.server.api, method, path, body)

    async def put(self, doc: dict[str, Any]) -> Any:
        return await self.api("PUT", f"/environments/{self.env}/flags/{doc['key']}", doc)

    async def toggle(self, key: str, on: bool, wait: float | None = None) -> Any:
        query = f"?wait={wait}" if wait is not None else ""
        return await self.api("PATCH", f"/environments/{self.env}/flags/{key}{query}", {"on": on})

    def client(self, url: str | None = None, **kw: Any) -> FlagClient:
        kw.setdefault("backoff", FAST)
        kw.setdefault("heartbeat_timeout", 3.0)
        return FlagClient(url or self.server.url, self.sdk, **kw)

    async def assert_equal_to_redis(self, *clients: FlagClient) -> None:
        state = await self.store.load_env(self.env)
        for c in clients:
            snap = c.snapshot
            assert snap is not None
            assert (snap.epoch, snap.version) == (state.epoch, state.version)
            assert dict(snap.flags) == state.flags
            assert dict(snap.segments) == state.segments


@pytest.fixture
async def world(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> AsyncIterator[World]:
    server = await asyncio.to_thread(make_server, env={"FLAGWIRE_RING_SIZE": "5"})
    env = f"e{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(server.api, "POST", "/environments", {"key": env})
    created = await asyncio.to_thread(
        server.api, "POST", "/keys", {"name": "client tests", "kind": "sdk", "env": env}
    )
    r = aioredis.Redis.from_url(redis_url)
    yield World(server, env, created["secret"], Store(r, redis_prefix))
    await r.aclose()


async def until(predicate: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """:func:`tests.support.polling.poll` with this module's deadline."""
    await poll(predicate, within, what or str(predicate), 0.01)


async def test_toggle_reaches_50_clients_and_wait_confirms_every_ack(world: World) -> None:
    await world.put(flag("checkout"))
    clients = [world.client() for _ in range(50)]
    statuses = await asyncio.gather(*(c.start() for c in clients))
    try:
        assert set(statuses) == {ClientStatus.READY}
        assert all(c.bool_variation("checkout", CTX, False) for c in clients)
        out = await world.toggle("checkout", False, wait=5)
        prop = out["propagation"]
        assert prop["connected"] == 50
        assert prop["acknowledged"] == 50
        assert prop["complete"] is True
        # acknowledged means applied: every client already answers with the new value
        assert not any(c.bool_variation("checkout", CTX, True) for c in clients)
        await world.assert_equal_to_redis(*clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_server_killed_and_restarted_clients_go_stale_then_converge(world: World) -> None:
    await world.put(flag("a"))
    await world.put(flag("b", on=False))
    clients = [world.client() for _ in range(5)]
    await asyncio.gather(*(c.start() for c in clients))
    try:
        snapshots_before = [c.stats["snapshots"] for c in clients]
        await asyncio.to_thread(world.server.kill)
        await asyncio.gather(*(c.wait_for_status(ClientStatus.STALE, timeout=5) for c in clients))
        for c in clients:  # cached flags are served
            assert c.bool_variation("a", CTX, False) is True
            assert c.bool_variation("b", CTX, True) is False
        # changes made while the clients are away (straight into Redis: the API is down)
        await world.store.patch(world.env, "flag", "a", {"on": False}, actor="test")
        await world.store.put(world.env, "flag", flag("c"), actor="test")
        await world.store.delete(world.env, "flag", "b", actor="test")
        await asyncio.sleep(0.3)
        age = clients[0].data_age
        assert age is not None
        assert age > 0.2
        await asyncio.to_thread(world.server.start)
        await asyncio.gather(*(c.wait_for_status(ClientStatus.READY, timeout=10) for c in clients))
        await world.assert_equal_to_redis(*clients)
        for c, before in zip(clients, snapshots_before, strict=True):
            assert c.bool_variation("a", CTX, True) is False
            assert c.bool_variation("c", CTX, False) is True
            assert c.variation_detail("b", CTX, None).error_kind == "FLAG_NOT_FOUND"
            # a new instance's change ring is empty: the catch-up is a snapshot
            assert c.stats["snapshots"] == before + 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_bad_sdk_key_is_unauthorized_without_a_reconnect_storm(world: World) -> None:
    flags = FlagClient(world.server.url, "fw_sdk_not-a-real-key", backoff=FAST, start_timeout=3)
    status = await flags.start()
    try:
        assert status is ClientStatus.UNAUTHORIZED
        assert flags.status is ClientStatus.UNAUTHORIZED
        assert "401" in flags.status_message
        assert "refused" in flags.status_message or "key" in flags.status_message
        await asyncio.sleep(1.0)  # ten backoff ceilings
        assert flags.connection_attempts == 1
        assert flags.bool_variation("a", CTX, True) is True  # defaults, no exception
    finally:
        await flags.close()


async def test_fail_on_timeout_raises_for_a_refused_key(world: World) -> None:
    flags = FlagClient(world.server.url, "fw_sdk_nope", fail_on_timeout=True, start_timeout=3)
    with pytest.raises(AuthenticationError, match="401"):
        await flags.start()
    assert flags.status is ClientStatus.CLOSED


async def test_an_admin_key_as_sdk_key_is_refused_at_once_with_the_servers_reason(
    world: World,
) -> None:
    """Issue 10 item 9: it sat INITIALIZING for the start timeout, retrying, showing "HTTP 400"."""
    flags = FlagClient(world.server.url, world.server.admin_key, backoff=FAST, start_timeout=5)
    t0 = time.monotonic()
    status = await flags.start()
    try:
        assert status is ClientStatus.UNAUTHORIZED
        assert time.monotonic() - t0 < 2.0
        assert "must pass ?env=NAME" in flags.status_message
        assert "400" in flags.status_message
        refusal = flags.refusal
        assert isinstance(refusal, RefusedError)
        assert (refusal.status, refusal.code) == (400, "env_required")
        await asyncio.sleep(1.0)  # ten backoff ceilings
        assert flags.connection_attempts == 1
    finally:
        await flags.close()
    strict = FlagClient(world.server.url, world.server.admin_key, fail_on_timeout=True)
    with pytest.raises(RefusedError, match=r"must pass \?env=NAME"):
        await strict.start()


async def test_a_change_after_three_restarts_arrives_within_3s_of_readiness(
    world: World,
) -> None:
    """Issue 10 item 1: after restarts within a minute the next attempt was up to 30 s away.

    Default reconnect settings: the policy itself is under test.
    """
    await world.put(flag("kill", on=True))
    clients = [
        FlagClient(world.server.url, world.sdk, heartbeat_timeout=5.0, start_timeout=10)
        for _ in range(20)
    ]
    await asyncio.gather(*(c.start() for c in clients))
    seen: dict[int, float] = {}
    for i, c in enumerate(clients):
        c.on_change(lambda ch, i=i: seen.setdefault(i, time.monotonic()), key="kill")
    try:
        t0 = time.monotonic()
        for _ in range(3):
            await asyncio.to_thread(world.server.restart)
        ready = time.monotonic()
        assert ready - t0 < 30, f"three restarts took {ready - t0:.1f}s"
        await world.toggle("kill", False)
        await until(lambda: len(seen) == len(clients), within=15, what="the change everywhere")
        late = sorted(round(t - ready, 2) for t in seen.values())
        print(f"\nthree restarts in {ready - t0:.1f}s; the change, s after readiness: {late}")
        assert late[-1] <= 3.0, f"seconds after readiness: {late}"
        assert not any(c.bool_variation("kill", CTX, True) for c in clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_partition_detected_then_replayed_from_the_ring(world: World) -> None:
    await world.put(flag("a"))
    async with FaultProxy("127.0.0.1", world.server.port) as proxy:
        flags = world.client(proxy.url, heartbeat_timeout=1.0, open_timeout=1.0)
        async with flags:
            assert flags.status is ClientStatus.READY
            proxy.pause()
            t0 = time.monotonic()
            await flags.wait_for_status(ClientStatus.STALE, timeout=5)
            assert time.monotonic() - t0 < 1.0 + 0.5
            before = flags.stats
            await world.toggle("a", False)  # made while partitioned, within the ring (5)
            await world.put(flag("b"))
            assert flags.bool_variation("a", CTX, False) is True  # still the cached value
            proxy.resume()
            await flags.wait_for_status(ClientStatus.READY, timeout=10)
            await until(lambda: flags.bool_variation("b", CTX, False), what="b")
            assert flags.bool_variation("a", CTX, True) is False
            await world.assert_equal_to_redis(flags)
            after = flags.stats
            assert after["snapshots"] == before["snapshots"]  # replayed, not re-sent whole
            assert after["changes"] >= before["changes"] + 2


async def test_partition_longer_than_the_ring_ends_with_a_snapshot(world: World) -> None:
    await world.put(flag("a"))
    async with FaultProxy("127.0.0.1", world.server.port) as proxy:
        flags = world.client(proxy.url, heartbeat_timeout=1.0, open_timeout=1.0)
        async with flags:
            proxy.pause()
            await flags.wait_for_status(ClientStatus.STALE, timeout=5)
            before = flags.stats["snapshots"]
            for i in range(8):  # more changes than the ring (5) holds
                await world.put(flag(f"f{i}"))
            proxy.resume()
            await until(lambda: flags.bool_variation("f7", CTX, False), what="f7")
            await world.assert_equal_to_redis(flags)
            assert flags.stats["snapshots"] == before + 1


async def test_cut_connection_reconnects_quickly(world: World) -> None:
    await world.put(flag("a"))
    async with FaultProxy("127.0.0.1", world.server.port) as proxy:
        flags = world.client(proxy.url)
        async with flags:
            assert await proxy.cut() == 1
            await flags.wait_for_status(ClientStatus.STALE, timeout=5)
            await flags.wait_for_status(ClientStatus.READY, timeout=5)
            assert flags.stats["connections"] == 2


async def test_persisted_snapshot_serves_when_the_server_is_down_at_start(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "flags.json"
    await world.put(flag("a", on=False))
    await world.put(flag("theme", variations=["dark", "light"]))
    async with world.client(persist_path=path, persist_debounce=0.05) as first:
        await world.toggle("a", True)
        await until(lambda: first.bool_variation("a", CTX, False), what="toggle")
        await until(path.exists, what="the snapshot file")
    assert path.exists()
    await asyncio.to_thread(world.server.stop)

    second = world.client(persist_path=path, start_timeout=0.5)
    try:
        status = await second.start()
        assert status is ClientStatus.STALE
        assert second.start_status is ClientStatus.STALE
        assert "persisted" in second.status_message
        assert second.bool_variation("a", CTX, False) is True
        assert second.string_variation("theme", CTX, "") == "dark"
        age = second.data_age
        assert age is not None
        assert age > 0
        await asyncio.to_thread(world.server.start)
        await second.wait_for_status(ClientStatus.READY, timeout=10)
        await world.assert_equal_to_redis(second)
    finally:
        await second.close()

    # no file and no server: defaults, and the caller is told so
    await asyncio.to_thread(world.server.stop)
    third = world.client(persist_path=tmp_path / "missing.json", start_timeout=0.3)
    try:
        assert await third.start() is ClientStatus.INITIALIZING
        assert "defaults" in third.status_message
        assert third.variation_detail("a", CTX, False).error_kind == "CLIENT_NOT_READY"
    finally:
        await third.close()


async def test_close_waits_for_a_snapshot_write_in_flight_and_leaves_the_latest(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() during a slow write of the file must not return before the latest data is
    on disk: it used to cancel the write's task, the thread went on writing in the
    background, and close() returned with the file still at the version before (the
    persisted-snapshot test above failed under load this way, reading version 2)."""
    from flagwire import _persistence

    real = _persistence.save_snapshot

    def slow(*args: Any, **kw: Any) -> None:
        time.sleep(0.3)  # a slow disk
        real(*args, **kw)

    path = tmp_path / "flags.json"
    await world.put(flag("a", on=False))
    client = world.client(persist_path=path, persist_debounce=0.0)
    await client.start()
    await until(path.exists, what="the first snapshot file")
    monkeypatch.setattr(_persistence, "save_snapshot", slow)
    await world.toggle("a", True)
    await until(lambda: client.bool_variation("a", CTX, False), what="toggle")
    await asyncio.sleep(0.05)  # the write of the new version is under way
    await client.close()
    saved = _persistence.load_snapshot(path)
    assert saved is not None
    assert saved[0].version == client.version
    assert saved[0].evaluate("a", CTX, False).value is True


@pytest.mark.slow
async def test_reconnects_after_a_restart_are_spread_out(world: World) -> None:
    """500 clients, server killed and started again: reconnections spread over time.

    For each client we take the moment it began the connection attempt that
    brought it back: when the server saw it knock.  Without jitter all 500
    would knock within a few milliseconds of each other.
    """
    await world.put(flag("a"))
    n = 500
    clients = [
        FlagClient(world.server.url, world.sdk, heartbeat_timeout=30.0, start_timeout=30.0)
        for _ in range(n)
    ]
    knocks: list[float] = []
    ready: list[float] = []

    def back(client: FlagClient, status: ClientStatus) -> None:
        if status is ClientStatus.READY:
            assert client._subscription is not None
            knocks.append(client._subscription.attempt_started)
            ready.append(time.monotonic())

    try:
        for i in range(0, n, 100):  # connect in batches, as a fleet would
            await asyncio.gather(*(c.start() for c in clients[i : i + 100]))
        assert all(c.status is ClientStatus.READY for c in clients)
        for c in clients:
            c.on_status(lambda s, c=c: back(c, s))
        # Keep this process's own garbage collections (over 500 clients' objects)
        # from stalling the loop and bunching the timestamps.
        gc.collect()
        gc.freeze()
        down = time.monotonic()
        await asyncio.to_thread(world.server.kill)  # a crash: no close frames
        await asyncio.to_thread(world.server.start)
        up = time.monotonic()
        await asyncio.gather(*(c.wait_for_status(ClientStatus.READY, timeout=30) for c in clients))
        await world.toggle("a", False, wait=5)
        await until(
            lambda: not any(c.bool_variation("a", CTX, True) for c in clients),
            within=10,
            what="the toggle everywhere",
        )
    finally:
        gc.unfreeze()
        await asyncio.gather(*(c.close() for c in clients))
    assert len(knocks) == n
    knocks.sort()
    ready.sort()

    def peak(times: list[float]) -> int:
        return max(sum(1 for t in times if s <= t < s + 0.1) for s in times)

    span = knocks[-1] - knocks[0]
    q = [round(knocks[int(f * (n - 1))] - up, 2) for f in (0, 0.1, 0.5, 0.9, 0.99, 1)]
    print(
        f"\n{n} reconnections after a restart of {up - down:.2f}s: attempts span {span:.2f}s, "
        f"quantiles after ready {q}, peak {peak(knocks)} in 100 ms; "
        f"READY again over {ready[-1] - ready[0]:.2f}s, peak {peak(ready)} in 100 ms"
    )
    assert span > 1.0
    assert knocks[int(0.9 * n)] - knocks[int(0.1 * n)] > 0.5
    # Loose: this loop shares a 2-core machine with the starting server, and a
    # stall releases every timer that expired during it at once.
    assert peak(knocks) / n <= 0.30
