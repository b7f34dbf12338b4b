"""/api/v1/stream against a real ``flagwire serve``: handshake, snapshot, resume, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets

from flagwire.core.protocol import Delete, Hello, Patch, SnapshotMessage, decode
from flagwire_server.store.apikeys import KeyRing
from flagwire_server.store.documents import Store
from tests.support.builders import flag
from tests.support.server import ServerProcess
from tests.support.streamclient import StreamClient, connect_raw, wait_until

pytestmark = pytest.mark.timeout(60)


@dataclass
class World:
    server: ServerProcess
    redis: aioredis.Redis
    store: Store
    keys: KeyRing
    sdk: str  # an SDK key of "production"

    async def put(self, key: str, **fields: Any) -> int:
        res = await self.store.put("production", "flag", flag(key, **fields), actor="test")
        return res.env_version

    def client(self, key: str | None = None, **kwargs: Any) -> StreamClient:
        return StreamClient(self.server.ws_url, key or self.sdk, **kwargs)


async def sdk_key(server: ServerProcess, keys: KeyRing, env: str = "production") -> str:
    """Create an SDK key and wait until the server knows it (its key ring polls)."""
    _rec, secret = await keys.create("test sdk", "sdk", env)

    async def known() -> bool:
        try:
            ws = await connect_raw(server.ws_url, secret)
        except websockets.InvalidStatus:
            return False
        await ws.close()
        return True

    await wait_until(known, 5, 0.05, "the server to learn the new key")
    return secret


@pytest.fixture
async def world(server: ServerProcess, redis_url: str, redis_prefix: str) -> AsyncIterator[World]:
    r = aioredis.Redis.from_url(redis_url)
    keys = KeyRing(r, redis_prefix)
    store = Store(r, redis_prefix)
    yield World(server, r, store, keys, await sdk_key(server, keys))
    await r.aclose()


async def refused(url: str, key: str | None, **kwargs: Any) -> tuple[int, bytes]:
    try:
        ws = await connect_raw(url, key, **kwargs)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""
    await ws.close()
    raise AssertionError("the handshake was accepted")


async def test_hello_snapshot_then_live_patches(world: World) -> None:
    await world.put("alpha")
    v2 = await world.put("beta", on=False)
    c = await world.client().connect()
    try:
        await c.wait_version(v2)
        hello, snap = c.messages[0], c.messages[1]
        assert isinstance(hello, Hello)
        assert hello.env == "production"
        assert hello.version == v2
        assert isinstance(snap, SnapshotMessage)
        assert snap.version == v2
        assert snap.epoch == hello.epoch
        assert set(snap.flags) == {"alpha", "beta"}
        assert snap.flags["beta"]["on"] is False
        v3 = await world.put("beta", on=True)
        await c.wait_version(v3)
        patch = c.messages[-1]
        assert isinstance(patch, Patch)
        assert patch.key == "beta"
        assert patch.version == v3
        assert c.flags["beta"]["on"] is True
        await world.store.delete("production", "flag", "alpha", actor="test")
        await c.wait_version(v3 + 1)
        assert isinstance(c.messages[-1], Delete)
        assert "alpha" not in c.flags
        assert c.gaps == []
    finally:
        await c.close()


async def test_resume_with_since_replays_only_the_missed_changes(world: World) -> None:
    await world.put("a")
    c = await world.client().connect()
    await c.wait_version(1)
    await c.close()
    for i in range(3):
        await world.put("a", on=bool(i % 2))
    await c.connect(since=c.version, epoch=c.epoch)
    try:
        await c.wait_version(4)
        after = c.since_hello()[1:]
        assert [type(m) for m in after] == [Patch, Patch, Patch]
        assert [m.version for m in after] == [2, 3, 4]
    finally:
        await c.close()
    # Up to date already: hello and nothing else until the next change.
    await c.connect(since=4, epoch=c.epoch)
    try:
        v = await world.put("a", on=True)
        await c.wait_version(v)
        assert [m.type for m in c.since_hello()] == ["hello", "patch"]
    finally:
        await c.close()


@pytest.mark.parametrize(("since", "epoch"), [(1, "not-the-epoch"), (99, None), (0, None)])
async def test_resume_that_cannot_be_served_gets_a_snapshot(
    world: World, since: int, epoch: str | None
) -> None:
    await world.put("a")
    await world.put("b")
    probe = await world.client().connect()
    await probe.wait_version(2)
    await probe.close()
    c = world.client()
    if since == 0:
        # since=0 with the right epoch is covered only while the ring holds version 1;
        # a fresh server process has an empty ring, so it answers with a snapshot.
        await asyncio.to_thread(world.server.restart)
    await c.connect(since=since, epoch=epoch or probe.epoch)
    try:
        await c.wait_version(2)
        assert [m.type for m in c.since_hello()][:2] == ["hello", "snapshot"]
        assert set(c.flags) == {"a", "b"}
    finally:
        await c.close()


async def test_handshake_refusals(world: World, admin_key: str) -> None:
    url = world.server.ws_url
    status, body = await refused(url, None)
    assert status == 401
    assert b"Bearer" in body
    assert (await refused(url, "fw_sdk_doesnotexist"))[0] == 401
    assert (await refused(url, admin_key))[0] == 400  # admin keys must name ?env=
    assert (await refused(url, admin_key, query={"env": "nope"}))[0] == 404
    assert (await refused(url, world.sdk, query={"env": "staging"}))[0] == 403
    assert (await refused(url, world.sdk, query={"since": "x"}))[0] == 400
    status, body = await refused(url, world.sdk, headers={"Origin": "https://evil.example"})
    assert status == 403
    assert b"Origin" in body
    # Same origin (browser on the server's own host) and admin with env are fine.
    host = url.split("/")[2]
    for key, kwargs in (
        (world.sdk, {"headers": {"Origin": f"http://{host}"}}),
        (admin_key, {"query": {"env": "production"}}),
    ):
        ws = await connect_raw(url, key, **kwargs)
        assert isinstance(decode(await ws.recv()), Hello)
        await ws.close()


async def test_allowed_origins(make_server: Any, redis_prefix: str) -> None:
    srv = make_server(env={"FLAGWIRE_ALLOWED_ORIGINS": "https://app.example.com"})
    ws = await connect_raw(
        srv.ws_url,
        srv.admin_key,
        query={"env": "production"},
        headers={"Origin": "https://app.example.com"},
    )
    await ws.close()
    assert (
        await refused(
            srv.ws_url,
            srv.admin_key,
            query={"env": "production"},
            headers={"Origin": "https://other.example.com"},
        )
    )[0] == 403


async def test_repeated_bad_keys_are_rate_limited(world: World) -> None:
    statuses = [(await refused(world.server.ws_url, f"fw_sdk_bad{i}"))[0] for i in range(21)]
    # 20 failures a minute per IP (the fixture's wait for its key may have used a few).
    first = statuses.index(429)
    assert set(statuses[:first]) == {401}
    assert set(statuses[first:]) == {429}
    assert first >= 15
    # A good key from the same IP is refused too while the window lasts.
    assert (await refused(world.server.ws_url, world.sdk))[0] == 429


async def test_bad_frames_close_only_that_stream(world: World) -> None:
    await world.put("a")
    bystander = await world.client().connect()
    garbage = await world.client().connect()
    huge = await world.client().connect()
    wrong = await world.client().connect()
    try:
        await garbage.send("this is not json")
        assert await garbage.wait_closed() == 4002
        assert "JSON" in garbage.close_reason
        assert len(garbage.close_reason.encode()) <= 123
        await huge.send("x" * 5000)
        assert await huge.wait_closed() == 1009
        await wrong.send(
            '{"type": "patch", "kind": "flag", "key": "a", "data": {"key": "a"}, "version": 9}'
        )
        assert await wrong.wait_closed() == 4002
        v = await world.put("a", on=False)
        await bystander.wait_version(v)
        assert bystander.close_code is None
    finally:
        for c in (bystander, garbage, huge, wrong):
            await c.close()


async def test_flooding_client_is_closed_with_4003(world: World) -> None:
    c = await world.client(ack=False).connect()
    try:
        for _ in range(400):
            await c.send('{"type": "ack", "version": 0}')
            if c.close_code is not None:
                break
        assert await c.wait_closed() == 4003
    finally:
        await c.close()


async def test_resync_sends_a_fresh_snapshot_in_order(world: World) -> None:
    await world.put("a")
    c = await world.client().connect()
    try:
        await c.wait_version(1)
        await c.send('{"type": "resync"}')
        await wait_until(lambda: c.types().count("snapshot") == 2, 5, what="second snapshot")
    finally:
        await c.close()


async def test_revoked_key_closes_its_streams_within_a_second(world: World) -> None:
    rec, secret = await world.keys.create("doomed", "sdk", "production")
    await wait_until(lambda: _accepts(world.server, secret), 5, 0.05, "key known")
    doomed = await world.client(secret).connect()
    other = await world.client().connect()
    try:
        await world.keys.revoke(rec.id)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await doomed.wait_closed(3) == 4001
        assert loop.time() - t0 < 1.5
        assert other.close_code is None
        assert (await refused(world.server.ws_url, secret))[0] == 401
    finally:
        await doomed.close()
        await other.close()


async def _accepts(server: ServerProcess, key: str) -> bool:
    try:
        ws = await connect_raw(server.ws_url, key)
    except websockets.InvalidStatus:
        return False
    await ws.close()
    return True
