"""Fault scenarios under load: slow consumers, a reconnect storm, abusive clients.

* Slow consumers: streams that never read past the handshake must be closed
  with 4000 ("resync") once their outbound buffer passes
  ``FLAGWIRE_MAX_BUFFER``; the other clients keep getting every change
  promptly, and the server's memory does not grow with what the stalled
  clients failed to read.
* Reconnect storm: 2,000 lean protocol clients in this process lose their
  server (SIGTERM, restart) while changes are written through a second
  instance; all of them come back, resume or resync, and converge, and the
  server stays healthy.
* Abusive clients: garbage (text and binary), oversized frames, server-only
  messages and floods close that connection with the specified code and a
  reason; everyone else is unaffected.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from flagwire import ClientStatus
from flagwire.core.limits import STREAM_PATH
from flagwire.core.protocol import CloseCode
from tests.support.builders import flag
from tests.support.faultkit import (
    CLIENT_TIMEOUT,
    FAST_ENV,
    Writer,
    fast_client,
    metric_value,
    no_secrets_logged,
    readyz,
)
from tests.support.invariants import (
    Admin,
    RawSubscriber,
    ReadyMonitor,
    RedisView,
    Watched,
    check_invariants,
    poll,
    wait_converged,
    wait_key_known,
    watch_client,
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

ENV = "production"


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _stalled_stream(port: int, key: str) -> socket.socket:
    """A stream that completes the handshake and then never reads another byte."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    nonce = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: leave the hello and snapshot unread
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return s


def _big_flag(key: str, n: int) -> dict[str, Any]:
    """A ~200 KB flag document (100 string variations of 2,000 characters)."""
    variations = [f"{n:06d}-{i:03d}-" + "x" * 1990 for i in range(100)]
    return flag(key, variations=variations, off_variation=0, fallthrough=1)


async def test_slow_consumers_are_dropped_and_nobody_else_notices(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    # Pings would eventually drop a peer that never reads too; give the buffer
    # limit the first word by making the ping timeout long.
    server = make_server(
        env={**FAST_ENV, "FLAGWIRE_PING_TIMEOUT": "60", "FLAGWIRE_MAX_BUFFER": str(256 * 1024)}
    )
    admin = Admin(server.url, server.admin_key)
    view = RedisView(redis_url, redis_prefix)
    watched: list[Watched] = []
    stalled: list[socket.socket] = []
    try:
        assert (await admin.put_flag(ENV, flag("k0"))).acked
        _id, sdk = await admin.create_key("sdk", ENV)
        await wait_key_known([server.ws_url], sdk)
        clients = [watch_client(fast_client(server.url, sdk), f"client{i}") for i in range(3)]
        watched.extend(clients)
        await asyncio.gather(*(c.client.start() for c in clients))
        raws = [
            RawSubscriber(server.ws_url, sdk, f"raw{i}", timeout=CLIENT_TIMEOUT).start()
            for i in range(10)
        ]
        watched.extend(raws)
        for r in raws:
            await asyncio.wait_for(r.first.wait(), 10)
        stalled = [await asyncio.to_thread(_stalled_stream, server.port, sdk) for _ in range(10)]
        await poll(lambda: _connected_is(server.url, 23), 5, "23 open streams")
        monitor = ReadyMonitor(view, watched).start()
        rss0 = _rss_mib(server.pid or 0)

        # ~8 MB of changes: more than kernel buffers plus the 256 KiB limit per stalled stream.
        started = time.monotonic()
        for n in range(40):
            w = await admin.put_flag(ENV, _big_flag(f"big{n % 4}", n))
            assert w.acked, (w.status, str(w.body)[:300])
        pushed = time.monotonic() - started

        async def dropped() -> float:
            return (
                await metric_value(
                    server.url, "flagwire_stream_closes_total", {"code": str(CloseCode.RESYNC)}
                )
                or 0.0
            )

        await poll(lambda: _ge(dropped(), 10), 15, "the 10 stalled streams to be closed with 4000")
        await poll(lambda: _connected_is(server.url, 13), 5, "only the 13 readers left")
        assert any("too slow" in str(r.get("msg", "")) for r in server.log_records())
        await check_invariants(view, watched, admin.writes, monitor)
        # Healthy readers were never disconnected by the stalled ones.
        assert all(len(r.connects) == 1 for r in raws), [len(r.connects) for r in raws]
        assert all(c.client.status is ClientStatus.READY for c in clients)
        growth = _rss_mib(server.pid or 0) - rss0
        # Unbounded buffering would hold ~8 MB per stalled stream (80 MB).
        assert growth < 40, f"server RSS grew {growth:.0f} MiB (writes took {pushed:.1f}s)"
    finally:
        for s in stalled:
            s.close()
        for w in watched:
            await w.close()
        await admin.aclose()
        await view.aclose()


async def _connected_is(url: str, n: int) -> bool:
    status, body = await readyz(url)
    return status == 200 and body.get("connected") == n


async def _ge(value: Any, n: float) -> bool:
    return bool(await value >= n)


STORM = 2000


async def _put_retrying(admin: Admin, doc: dict[str, Any]) -> None:
    """A write that must land; on a busy machine an HTTP call may fail (recorded as unanswered)."""
    for _ in range(5):
        w = await admin.put_flag(ENV, doc)
        if w.acked:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"write of {doc['key']} not acknowledged: {w.status} {w.error}")


async def test_reconnect_storm_of_2000_clients(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * STORM:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * STORM), hard))
    server = make_server(env={**FAST_ENV, "FLAGWIRE_HEARTBEAT": "5", "FLAGWIRE_PING_TIMEOUT": "10"})
    writer_side = make_server(env=FAST_ENV)  # another instance: writes while the first is down
    admin = Admin(writer_side.url, server.admin_key, timeout=10)
    view = RedisView(redis_url, redis_prefix)
    crowd: list[RawSubscriber] = []
    begun = time.monotonic()
    try:
        for i in range(5):
            assert (await admin.put_flag(ENV, flag(f"k{i}"))).acked
        _id, sdk = await admin.create_key("sdk", ENV)
        await wait_key_known([server.ws_url], sdk)
        crowd = [
            RawSubscriber(
                server.ws_url, sdk, f"s{i}", keepalive=False, timeout=10, backoff=1.0
            ).start()
            for i in range(STORM)
        ]
        t0 = time.monotonic()
        print(f"storm: set up in {t0 - begun:.1f}s")
        await poll(lambda: all(c.first.is_set() for c in crowd), 60, f"{STORM} clients connected")
        print(f"storm: {STORM} connected in {time.monotonic() - t0:.1f}s")
        await _put_retrying(admin, flag("k0", on=False))
        await wait_converged(view, crowd, 30)
        monitor = ReadyMonitor(view, list(crowd), interval=0.2, slack=2.0).start()

        print(f"storm: first convergence {time.monotonic() - t0:.1f}s after the start")
        await asyncio.to_thread(server.stop)
        down_at = time.monotonic()
        print(f"storm: stopped in {down_at - t0:.1f}s after the start")
        # Changes made while the crowd is away, from a thread: this event loop is busy
        # with 2,000 clients retrying.
        away = await asyncio.to_thread(
            admin.put_flags_blocking, ENV, [flag(f"k{n % 5}", on=bool(n % 2)) for n in range(10)]
        )
        assert all(w.acked for w in away), [(w.status, w.error) for w in away if not w.acked]
        written = time.monotonic()
        await asyncio.to_thread(server.start)
        up_at = time.monotonic()
        print(
            f"storm: changes written in {written - down_at:.1f}s, "
            f"server restarted in {up_at - written:.1f}s"
        )
        await poll(lambda: all(c.connected for c in crowd), 60, f"all {STORM} clients reconnected")
        back = time.monotonic() - up_at
        print(
            f"storm: reconnected {time.monotonic() - up_at:.1f}s after the restart",
            await readyz(server.url),
        )
        writer = Writer(admin, interval=0.05).start()
        await asyncio.sleep(1.0)
        await writer.stop()
        await check_invariants(view, crowd, admin.writes, monitor, converge_timeout=60)
        print(
            f"storm: converged {time.monotonic() - up_at:.1f}s after the restart",
            await readyz(server.url),
        )

        # The server stayed healthy through it, and counts every stream it serves.
        status, body = await readyz(server.url)
        assert status == 200, body
        assert server.running
        try:
            await poll(
                lambda: _connected_is(server.url, STORM), 10, f"/readyz to count {STORM} streams"
            )
        except AssertionError as exc:
            mine = sum(c.connected for c in crowd)
            codes = sorted({str(code) for c in crowd for _t, code, _r in c.closes})
            notes = [r for r in server.log_records() if r.get("level") in ("warning", "error")]
            raise AssertionError(
                f"{exc}: /readyz says {(await readyz(server.url))[1]}; "
                f"{mine} clients hold an open stream; close codes seen "
                f"{codes}; server warnings {notes[-5:]}"
            ) from None
        reconnects = sorted(t for c in crowd for t in c.connects if t > down_at)
        assert len(reconnects) >= STORM
        peak = max(bisect.bisect_left(reconnects, t + 0.1) - i for i, t in enumerate(reconnects))
        print(
            f"storm: {STORM} clients back {back:.1f}s after the restart; "
            f"peak {peak} connections per 100 ms"
        )
    finally:
        t0 = time.monotonic()
        await asyncio.gather(*(c.close(graceful=False) for c in crowd))
        print(
            f"storm: teardown {time.monotonic() - t0:.1f}s; {time.monotonic() - begun:.1f}s in all"
        )
        await admin.aclose()
        await view.aclose()


# --- abusive clients -------------------------------------------------------------------


async def _abuse(
    ws_url: str, key: str, frames: list[str | bytes], *, wait: float = 5.0
) -> tuple[int | None, str]:
    """Open a stream, send ``frames``, return the server's close code and reason."""
    ws = await websockets.connect(
        ws_url,
        additional_headers={"Authorization": f"Bearer {key}"},
        compression=None,
        max_size=None,
        open_timeout=5,
    )
    try:
        for f in frames:
            await ws.send(f)
        async with asyncio.timeout(wait):
            async for _msg in ws:
                pass
    except websockets.ConnectionClosed:
        pass
    except TimeoutError:
        return None, "still open"
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "no close frame")


async def test_abusive_clients_are_closed_and_nobody_else_notices(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    server = make_server(env=FAST_ENV)
    admin = Admin(server.url, server.admin_key)
    view = RedisView(redis_url, redis_prefix)
    watched: list[Watched] = []
    try:
        assert (await admin.put_flag(ENV, flag("k0"))).acked
        _id, sdk = await admin.create_key("sdk", ENV)
        await wait_key_known([server.ws_url], sdk)
        clients = [watch_client(fast_client(server.url, sdk), f"client{i}") for i in range(3)]
        watched.extend(clients)
        await asyncio.gather(*(c.client.start() for c in clients))
        raws = [
            RawSubscriber(server.ws_url, sdk, f"raw{i}", timeout=CLIENT_TIMEOUT).start()
            for i in range(5)
        ]
        watched.extend(raws)
        for r in raws:
            await asyncio.wait_for(r.first.wait(), 10)
        monitor = ReadyMonitor(view, watched).start()
        writer = Writer(admin, interval=0.03).start()

        cases: dict[str, tuple[list[str | bytes], set[int]]] = {
            "garbage text": (["this is not json"], {CloseCode.BAD_MESSAGE}),
            "garbage binary": ([os.urandom(64)], {CloseCode.BAD_MESSAGE}),
            "json but not a message": (
                ['{"type": "nonsense", "version": 1}'],
                {CloseCode.BAD_MESSAGE},
            ),
            "server-only message": (
                [
                    '{"type":"snapshot","env":"production","epoch":"x",'
                    '"version":1,"flags":{},"segments":{}}'
                ],
                {CloseCode.BAD_MESSAGE},
            ),
            "oversized text frame": (["x" * 5000], {CloseCode.MESSAGE_TOO_BIG}),
            "oversized binary frame (1 MiB)": ([os.urandom(1 << 20)], {CloseCode.MESSAGE_TOO_BIG}),
            "flood of acks": (['{"type":"ack","version":0}'] * 2000, {CloseCode.RATE_LIMITED}),
        }
        results = {}
        for name, (frames, _codes) in cases.items():
            code, reason = await _abuse(server.ws_url, sdk, frames)
            results[name] = (code, reason)
        wrong = {
            name: got for name, got in results.items() if got[0] not in cases[name][1] or not got[1]
        }
        assert not wrong, f"closed with the wrong code or without a reason: {wrong}"

        await writer.stop()
        await check_invariants(view, watched, admin.writes, monitor)
        assert all(len(r.connects) == 1 for r in raws), "a healthy stream was disconnected"
        assert all(c.client.status is ClientStatus.READY for c in clients)
        assert (await readyz(server.url))[0] == 200
        assert server.running
        no_secrets_logged([server], [sdk, server.admin_key])
    finally:
        for w in watched:
            await w.close()
        await admin.aclose()
        await view.aclose()
