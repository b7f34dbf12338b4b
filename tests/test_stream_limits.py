"""Bounded streams (issue 10, item 8): resyncs that would amplify, and too many streams.

Real server, real sockets: a client that asks for a snapshot 40 times a second
is closed with 4003 after at most a couple of snapshots, and one key or one
address past its cap of open streams is refused at the handshake with 429 and
a problem body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from flagwire.core.protocol import CloseCode
from tests.support.builders import flag
from tests.support.server import ServerProcess
from tests.support.streamclient import connect_raw, wait_until

pytestmark = pytest.mark.timeout(90)


async def _sdk_key(server: ServerProcess, env: str = "production") -> str:
    secret: str = server.api("POST", "/keys", {"name": "t", "kind": "sdk", "env": env})["secret"]

    async def known() -> bool:
        try:
            ws = await connect_raw(server.ws_url, secret)
        except websockets.InvalidStatus:
            return False
        await ws.close()
        return True

    await wait_until(known, 5, 0.05, "the server to learn the new key")
    return secret


async def _handshake_status(server: ServerProcess, key: str) -> tuple[int, dict[str, Any]]:
    try:
        ws = await connect_raw(server.ws_url, key)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")
    await ws.close()
    return 101, {}


async def test_resync_flood_is_closed_instead_of_amplified(server: ServerProcess) -> None:
    for i in range(15):  # a snapshot of about 60 KB
        server.api(
            "PUT", f"/environments/production/flags/f{i}", flag(f"f{i}", description="x" * 4000)
        )
    key = await _sdk_key(server)
    ws = await connect_raw(server.ws_url, key)
    received = 0
    snapshots = 0

    async def read() -> None:
        nonlocal received, snapshots
        try:
            async for frame in ws:
                received += len(frame)
                if isinstance(frame, str) and frame.startswith('{"type":"snapshot"'):
                    snapshots += 1
        except websockets.ConnectionClosed:
            pass

    reader = asyncio.create_task(read())

    async def greeted() -> bool:
        return snapshots == 1

    await wait_until(greeted, 10, 0.02, "the snapshot on connect")
    first = received  # hello + the snapshot on connect
    sent = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 3 and ws.close_code is None:
            await ws.send('{"type":"resync"}')
            sent += 1
            await asyncio.sleep(1 / 40)
    except websockets.ConnectionClosed:
        pass
    await asyncio.wait_for(reader, 5)
    assert ws.close_code == CloseCode.RATE_LIMITED, (ws.close_code, sent, snapshots)
    assert "resync" in (ws.close_reason or "")
    # The first resync is answered; the flood is not: a couple of snapshots, not one per resync.
    assert snapshots <= 3, snapshots
    assert received <= 3 * first, (received, first, sent)


async def test_resyncs_spaced_by_the_interval_are_all_answered(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(env={"FLAGWIRE_RESYNC_INTERVAL": "0.3"})
    key = await _sdk_key(server)
    async with await connect_raw(server.ws_url, key) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        assert json.loads(await ws.recv())["type"] == "snapshot"
        for _ in range(3):
            await asyncio.sleep(0.4)
            await ws.send('{"type":"resync"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "snapshot"
        assert ws.close_code is None


async def test_streams_per_address_are_capped(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"FLAGWIRE_MAX_STREAMS_PER_IP": "4"})
    keys = [await _sdk_key(server) for _ in range(2)]
    # _sdk_key's probes have closed; wait until the server counted them out.
    open_: list[Any] = []
    for i in range(4):
        open_.append(await _open_when_admitted(server, keys[i % 2]))
    status, body = await _handshake_status(server, keys[0])
    assert status == 429
    assert body["code"] == "too_many_streams"
    assert "address" in body["detail"]
    # A stream that ends frees its place.
    await open_.pop().close()
    open_.append(await _open_when_admitted(server, keys[1]))
    for ws in open_:
        await ws.close()


async def test_streams_per_key_are_capped(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"FLAGWIRE_MAX_STREAMS_PER_KEY": "3"})
    key, other = await _sdk_key(server), await _sdk_key(server)
    open_ = [await _open_when_admitted(server, key) for _ in range(3)]
    status, body = await _handshake_status(server, key)
    assert (status, body["code"]) == (429, "too_many_streams")
    assert "key" in body["detail"]
    # Another key from the same address is not affected.
    open_.append(await _open_when_admitted(server, other))
    for ws in open_:
        await ws.close()


async def _open_when_admitted(server: ServerProcess, key: str, patience: float = 5.0) -> Any:
    """Open a stream, retrying while earlier closed streams are still being counted out."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await connect_raw(server.ws_url, key)
        except websockets.InvalidStatus as exc:
            if exc.response.status_code != 429 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _stalled_stream(port: int, key: str) -> socket.socket:
    """A stream whose client completes the handshake and then never reads."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    nonce = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        ).encode()
    )
    assert b" 101 " in s.recv(4096).split(b"\r\n")[0]
    return s


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_memory_is_returned_after_stalled_streams_go(server: ServerProcess) -> None:
    """200 streams that stop reading while 12 big changes go out, then drop (issue 10, item 8).

    Seen before: RSS 62 -> 232 MiB, and still 232 MiB after they closed.
    """
    key = await _sdk_key(server)
    assert server.pid is not None
    await asyncio.sleep(0.5)
    before = _rss_mib(server.pid)
    socks = [_stalled_stream(server.port, key) for _ in range(200)]
    for i in range(12):  # segments of about 400 KB each
        doc = {"key": f"s{i % 3}", "included": [f"user-{i}-{j:06d}" for j in range(24_000)]}
        server.api("PUT", f"/environments/production/segments/s{i % 3}", doc)
    await asyncio.sleep(1)
    peak = _rss_mib(server.pid)
    for s in socks:
        s.close()

    async def all_gone() -> bool:
        _status, text = server.get("/metrics")
        return 'flagwire_connected_clients{env="production"} 0.0' in text

    await wait_until(all_gone, 10, 0.1, "the stalled streams to be counted out")
    await asyncio.sleep(1)
    after = _rss_mib(server.pid)
    print(f"RSS before {before:.0f} MiB, with stalled streams {peak:.0f}, after {after:.0f}")
    assert after - before < 64, (before, peak, after)


def test_quota_counts_per_key_and_address_and_forgets_at_zero() -> None:
    from flagwire_server.stream.quota import StreamQuota

    q = StreamQuota(per_key=2, per_ip=3)
    assert q.admit("k1", "a") is None
    assert q.admit("k1", "a") is None
    assert "key" in (q.admit("k1", "b") or "")
    assert q.admit("k2", "a") is None
    assert "address" in (q.admit("k3", "a") or "")
    for key in ("k1", "k1", "k2"):
        q.release(key, "a")
    assert (q.by_key, q.by_ip) == ({}, {})
