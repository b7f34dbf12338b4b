"""Fan-out across clients, processes and Redis trouble, against real `flagwire serve`s."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from flagwire.core.limits import STREAM_PATH
from flagwire_server.store.apikeys import KeyRing
from flagwire_server.store.documents import Store, StoreUnavailable
from tests.support.builders import flag
from tests.support.redisproc import RedisProcess
from tests.support.server import ServerProcess
from tests.support.streamclient import StreamClient, wait_until

pytestmark = pytest.mark.timeout(90)


class Admin:
    """Test-side access to one store (writes through the Store, keys through the KeyRing)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)
        self.store = Store(self.redis, prefix)
        self.keys = KeyRing(self.redis, prefix)

    async def sdk(self, *servers: ServerProcess, env: str = "production") -> str:
        _rec, secret = await self.keys.create("test sdk", "sdk", env)
        for srv in servers:  # each server's key ring polls every 250 ms
            await wait_until(lambda s=srv: _knows(s, secret), 5, 0.05, "the key to be known")
        return secret

    async def put(self, key: str, **fields: Any) -> int:
        for attempt in range(3):  # the first command after a Redis restart may hit a dead socket
            try:
                res = await self.store.put("production", "flag", flag(key, **fields), actor="test")
            except StoreUnavailable:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1)
            else:
                return res.env_version
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.redis.aclose()


async def _knows(server: ServerProcess, key: str) -> bool:
    c = StreamClient(server.ws_url, key)
    try:
        await c.connect()
    except Exception:
        return False
    await c.close()
    return True


@pytest.fixture
async def admin(redis_url: str, redis_prefix: str) -> AsyncIterator[Admin]:
    a = Admin(redis_url, redis_prefix)
    yield a
    await a.close()


async def connect_many(url: str, key: str, n: int, **kwargs: Any) -> list[StreamClient]:
    clients: list[StreamClient] = []
    for i in range(0, n, 50):
        batch = [StreamClient(url, key, **kwargs) for _ in range(min(50, n - i))]
        await asyncio.gather(*(c.connect() for c in batch))
        clients.extend(batch)
    return clients


async def close_all(clients: list[StreamClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    _status, text = server.get("/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            m = re.match(r"^(\S+)\s+(\S+)$", line)
            if m and (m.group(1) == name or m.group(1).startswith(name + "{")):
                total += float(m.group(2))
    return total


async def test_200_clients_get_a_toggle_and_wait_reports_all_acks(
    server: ServerProcess, admin: Admin
) -> None:
    await admin.put("kill-switch")
    key = await admin.sdk(server)
    clients = await connect_many(server.ws_url, key, 200)
    try:
        await asyncio.gather(*(c.wait_version(1) for c in clients))
        status, text = await asyncio.to_thread(
            server.request,
            "PATCH",
            "/api/v1/environments/production/flags/kill-switch?wait=15",
            {"on": False},
        )
        assert status == 200, text
        body = json.loads(text)
        v = body["env_version"]
        prop = body["propagation"]
        assert prop["version"] == v
        assert prop["connected"] == 200
        assert prop["acknowledged"] == 200
        assert prop["complete"] is True
        assert prop["max_ms"] is not None
        assert prop["p50_ms"] <= prop["p99_ms"] <= prop["max_ms"]
        for c in clients:
            assert c.version == v
            assert c.flags["kill-switch"]["on"] is False
            assert c.gaps == []
        # The same figures later, for any recent version.
        status, text = await asyncio.to_thread(
            server.request, "GET", f"/api/v1/environments/production/changes/{v}"
        )
        assert status == 200, text
        assert json.loads(text)["acknowledged"] == 200
        assert metric(server, "flagwire_connected_clients", 'env="production"') == 200
    finally:
        await close_all(clients)


async def test_a_change_through_one_process_reaches_clients_of_another(
    make_server: Callable[..., ServerProcess], admin: Admin
) -> None:
    a, b = make_server(), make_server()
    await admin.put("f")
    key = await admin.sdk(a, b)
    on_a = await connect_many(a.ws_url, key, 5)
    on_b = await connect_many(b.ws_url, key, 5)
    try:
        status, text = await asyncio.to_thread(
            a.request, "PATCH", "/api/v1/environments/production/flags/f?wait=15", {"on": False}
        )
        assert status == 200, text
        body = json.loads(text)
        for c in on_a + on_b:
            await c.wait_version(body["env_version"], 5)
            assert c.flags["f"]["on"] is False
        # Acks are counted over both processes.
        assert body["propagation"]["connected"] == 10
        assert body["propagation"]["acknowledged"] == 10
        assert body["propagation"]["instances"] == 2
    finally:
        await close_all(on_a + on_b)


async def test_clients_connecting_during_writes_end_at_redis_version(
    server: ServerProcess, admin: Admin
) -> None:
    key = await admin.sdk(server)
    await admin.put("f0")
    done = asyncio.Event()

    async def writer() -> None:
        for i in range(150):
            await admin.put(f"f{i % 7}", on=bool(i % 2))
        done.set()

    clients: list[StreamClient] = []

    async def joiner() -> None:
        while not done.is_set():
            c = StreamClient(server.ws_url, key, resync_on_gap=False)
            await c.connect()
            clients.append(c)
            await asyncio.sleep(0.01)

    await asyncio.gather(writer(), joiner())
    state = await admin.store.load_env("production")
    try:
        assert len(clients) >= 5
        for c in clients:
            await c.wait_version(state.version, 5)
            assert c.gaps == []  # never a gap, never a duplicate between snapshot and live
            assert c.flags == state.flags
    finally:
        await close_all(clients)


def _raw_stream(port: int, key: str) -> socket.socket:
    """A stream whose client never reads: tiny receive buffer, handshake only."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


async def test_a_client_that_never_reads_is_closed_and_others_are_unaffected(
    make_server: Callable[..., ServerProcess], admin: Admin
) -> None:
    srv = make_server(env={"FLAGWIRE_MAX_BUFFER": "262144"})
    key = await admin.sdk(srv)
    await admin.put("big", variations=["x" * 100_000, "y"])
    stalled = await asyncio.to_thread(_raw_stream, srv.port, key)
    reader = await StreamClient(srv.ws_url, key).connect()
    try:
        last = 0
        for i in range(120):
            last = await admin.put("big", variations=[("x" if i % 2 else "z") * 100_000, "y"])
            if metric(srv, "flagwire_stream_closes_total", 'code="4000"') >= 1:
                break
        assert metric(srv, "flagwire_stream_closes_total", 'code="4000"') == 1
        await reader.wait_version(last, 10)
        assert reader.close_code is None
        assert reader.gaps == []
        await wait_until(
            lambda: metric(srv, "flagwire_connected_clients") == 1,
            5,
            what="the stalled stream to be gone",
        )
    finally:
        stalled.close()
        await reader.close()


async def test_redis_stopped_and_restarted_mid_stream(
    make_server: Callable[..., ServerProcess], private_redis: RedisProcess, redis_prefix: str
) -> None:
    """Cached state is kept; past the heartbeat + 1 s the streams of a process
    that cannot read the change log are closed with 1013 and new ones refused (it cannot tell
    whether it is behind); when Redis is back, clients resume and converge."""
    srv = make_server(redis_url=private_redis.url, env={"FLAGWIRE_HEARTBEAT": "1"})
    admin = Admin(private_redis.url, redis_prefix)
    try:
        await admin.put("a")
        key = await admin.sdk(srv)
        clients = await connect_many(srv.ws_url, key, 10)
        await asyncio.gather(*(c.wait_version(1) for c in clients))

        await asyncio.to_thread(private_redis.stop)
        await wait_until(lambda: srv.get("/readyz")[0] == 503, 10, 0.1, "not ready")
        for c in clients:
            assert await c.wait_closed(6) == 1013
            assert c.flags.keys() == {"a"}  # what the client had, it keeps
        status, _body = await refused_status(srv.ws_url, key)
        assert status == 503

        await asyncio.to_thread(private_redis.start)
        await wait_until(lambda: srv.get("/readyz")[0] == 200, 15, 0.1, "ready again")
        for i in range(5):
            v = await admin.put("a", on=bool(i % 2))
        state = await admin.store.load_env("production")
        assert state.version == v
        for c in clients:
            await c.resume()
            await c.wait_version(v, 10)
            assert c.flags == state.flags
            assert c.gaps == []
        await close_all(clients)
    finally:
        await admin.close()


async def refused_status(url: str, key: str) -> tuple[int, bytes]:
    import websockets

    from tests.support.streamclient import connect_raw

    try:
        ws = await connect_raw(url, key)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""
    await ws.close()
    return 101, b""


async def test_redis_restarted_empty_is_a_store_reset_not_an_empty_world(
    make_server: Callable[..., ServerProcess], private_redis: RedisProcess, redis_prefix: str
) -> None:
    srv = make_server(redis_url=private_redis.url)
    admin = Admin(private_redis.url, redis_prefix)
    try:
        await admin.put("a")
        key = await admin.sdk(srv)
        c = await StreamClient(srv.ws_url, key).connect()
        await c.wait_version(1)
        await asyncio.to_thread(private_redis.stop)
        await asyncio.to_thread(private_redis.wipe)
        await asyncio.to_thread(private_redis.start)

        def reset_reported() -> bool:
            status, text = srv.get("/readyz")
            return status == 503 and "store_reset" in text

        await wait_until(reset_reported, 10, 0.1, "readyz to report store_reset")
        assert metric(srv, "flagwire_store_reset", 'env="production"') == 1
        assert any("STORE RESET" in r.get("msg", "") for r in srv.log_records())
        # Clients keep what they had; a new client still gets the last known flags.
        assert c.close_code is None
        assert c.flags.keys() == {"a"}
        # (The SDK key vanished with the store; FLAGWIRE_ADMIN_KEY still works.)
        late = await StreamClient(srv.ws_url, srv.admin_key, env="production").connect()
        await late.wait_version(1, 5)
        assert late.flags.keys() == {"a"}
        await late.close()
        await asyncio.sleep(1.0)  # revocations of vanished keys would have arrived by now
        assert c.close_code is None
        await c.close()
    finally:
        await admin.close()


async def test_new_environment_streams_at_once_and_deletion_closes_its_streams(
    server: ServerProcess, admin: Admin
) -> None:
    await admin.store.create_env("staging")
    key = await admin.sdk(server, env="staging")
    c = await StreamClient(server.ws_url, key).connect()
    try:
        await c.wait_version(0)
        assert c.hello is not None
        assert c.hello.env == "staging"
        res = await admin.store.put("staging", "flag", flag("s"), actor="test")
        await c.wait_version(res.env_version)
        await admin.store.delete_env("staging")
        assert await c.wait_closed(5) == 4000
        assert "deleted" in c.close_reason
    finally:
        await c.close()


async def test_a_gap_the_log_does_not_cover_reloads_and_resnapshots(
    server: ServerProcess, admin: Admin, redis_prefix: str
) -> None:
    """Simulate a trimmed log: the next entry is not version + 1."""
    import orjson

    from flagwire.core.protocol import patch_template

    v = await admin.put("a")
    key = await admin.sdk(server)
    c = await StreamClient(server.ws_url, key).connect()
    try:
        await c.wait_version(v)
        jump = v + 10
        doc = {**flag("b"), "version": 1}
        prefix, suffix = patch_template("flag", "b", doc)
        meta, flags = f"{redis_prefix}:{{production}}:meta", f"{redis_prefix}:{{production}}:flags"
        pipe = admin.redis.pipeline(transaction=True)
        pipe.hset(meta, "version", jump)
        pipe.hset(flags, "b", orjson.dumps(doc))
        pipe.xadd(
            f"{redis_prefix}:{{production}}:changes",
            {"m": prefix + str(jump).encode() + suffix, "t": "0"},
            id=f"{jump}-0",
        )
        await pipe.execute()
        await c.wait_version(jump, 5)
        assert c.types().count("snapshot") == 2  # the reload sent a fresh snapshot
        assert set(c.flags) == {"a", "b"}
        assert c.close_code is None
    finally:
        await c.close()


async def test_propagation_of_a_change_made_before_a_process_started(
    make_server: Callable[..., ServerProcess], admin: Admin
) -> None:
    a = make_server()
    key = await admin.sdk(a)
    c = await StreamClient(a.ws_url, key).connect()
    try:
        status, text = await asyncio.to_thread(
            a.request, "PUT", "/api/v1/environments/production/flags/f?wait=10", flag("f")
        )
        assert status in (200, 201), text
        v = json.loads(text)["env_version"]
        make_server()  # a second process, started after version v
        status, text = await asyncio.to_thread(
            a.request, "GET", f"/api/v1/environments/production/changes/{v}"
        )
        assert status == 200, text
        prop = json.loads(text)
        assert prop["complete"] is True
        assert prop["acknowledged"] == 1
    finally:
        await c.close()
