"""Fault scenarios: network partitions, clients↔server and server↔Redis.

The partitions are silent: :class:`~tests.support.proxy.FaultProxy` stops
forwarding without closing anything, as a dead link or a firewall dropping
packets does.  Timeouts are short (server heartbeat 1 s, ping timeout 2 s;
client timeout 3 s) and every partition lasts longer than them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from flagwire import ClientStatus
from flagwire.core.limits import STREAM_PATH
from tests.support.builders import flag
from tests.support.faultkit import CLIENT_TIMEOUT, FAST_ENV, Writer, fast_client, readyz
from tests.support.invariants import (
    Admin,
    RawSubscriber,
    ReadyMonitor,
    RedisView,
    Watched,
    check_invariants,
    poll,
    wait_key_known,
    watch_client,
)
from tests.support.proxy import FaultProxy
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ENV = "production"
PARTITION = 5.0  # seconds; longer than every timeout in play
SERVER_DROP = 3.0  # FLAGWIRE_HEARTBEAT + FLAGWIRE_PING_TIMEOUT


async def _connected(url: str) -> int | None:
    status, body = await readyz(url)
    return body.get("connected") if status else None


async def test_partition_between_clients_and_server(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    server = make_server(env=FAST_ENV)
    admin = Admin(server.url, server.admin_key)
    view = RedisView(redis_url, redis_prefix)
    watched: list[Watched] = []
    writer = Writer(admin, interval=0.05)
    proxy = await FaultProxy("127.0.0.1", server.port).start()
    try:
        for i in range(5):
            assert (await admin.put_flag(ENV, flag(f"k{i}"))).acked
        _id, sdk = await admin.create_key("sdk", ENV)
        await wait_key_known([server.ws_url], sdk)
        cut = [watch_client(fast_client(proxy.url, sdk), f"cut{i}") for i in range(4)]
        direct = [watch_client(fast_client(server.url, sdk), f"direct{i}") for i in range(2)]
        watched.extend(cut + direct)
        await asyncio.gather(*(w.client.start() for w in cut + direct))
        raws = [
            RawSubscriber(
                f"ws://127.0.0.1:{proxy.port}{STREAM_PATH}",
                sdk,
                f"rawcut{i}",
                timeout=CLIENT_TIMEOUT,
            ).start()
            for i in range(10)
        ]
        watched.extend(raws)
        for r in raws:
            await asyncio.wait_for(r.first.wait(), 10)
        await poll(lambda: _eq(_connected(server.url), 16), 5, "16 open streams")
        stale_at: dict[str, float] = {}
        for w in cut:
            w.client.on_status(
                lambda s, n=w.name: (
                    stale_at.setdefault(n, time.monotonic()) if s is ClientStatus.STALE else None
                )
            )

        monitor = ReadyMonitor(view, watched).start()
        writer.start()
        await poll(lambda: len(writer.acked()) >= 5, 10, "writes before the partition")
        proxy.pause()
        paused_at = time.monotonic()

        # The server drops the dead streams within its heartbeat + ping timeout ...
        await poll(
            lambda: _eq(_connected(server.url), 2),
            SERVER_DROP + 2.0,
            "the server to drop the 14 partitioned streams",
        )
        # ... the clients notice within their timeout and say they are STALE ...
        await poll(
            lambda: len(stale_at) == len(cut),
            CLIENT_TIMEOUT + 1.5,
            "every partitioned FlagClient to go STALE",
        )
        late = {
            n: round(t - paused_at, 2)
            for n, t in stale_at.items()
            if t - paused_at > CLIENT_TIMEOUT + 1.0
        }
        assert not late, f"partition noticed too late: {late}"
        # ... while the direct clients are unaffected and current.
        assert all(w.client.status is ClientStatus.READY for w in direct)
        await asyncio.sleep(max(0.0, PARTITION - (time.monotonic() - paused_at)))
        top = await view.version(ENV)
        assert all((w.version or 0) >= top - 1 for w in direct), [w.version for w in direct]

        proxy.resume()
        await poll(
            lambda: all(w.client.status is ClientStatus.READY for w in cut),
            CLIENT_TIMEOUT + 12,
            "the partitioned FlagClients to be READY again",
        )
        await writer.stop()
        await check_invariants(view, watched, admin.writes, monitor)
    finally:
        await writer.stop()
        for w in watched:
            await w.close()
        await proxy.close()
        await admin.aclose()
        await view.aclose()


async def _eq(value: object, want: int) -> bool:
    return await value == want  # type: ignore[misc]


async def test_partition_between_server_and_redis(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    parts = urlsplit(redis_url)
    redis_proxy = await FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    db = parts.path or "/0"
    # Started from a thread: the proxy runs on this event loop, which must keep turning.
    cut_server = await asyncio.to_thread(
        make_server, env=FAST_ENV, redis_url=f"redis://127.0.0.1:{redis_proxy.port}{db}"
    )
    other = await asyncio.to_thread(make_server, env=FAST_ENV)
    admin = Admin(other.url, other.admin_key)
    view = RedisView(redis_url, redis_prefix)
    watched: list[Watched] = []
    writer = Writer(admin, interval=0.05)  # through the server that keeps Redis
    try:
        for i in range(5):
            assert (await admin.put_flag(ENV, flag(f"k{i}"))).acked
        _id, sdk = await admin.create_key("sdk", ENV)
        await wait_key_known([cut_server.ws_url, other.ws_url], sdk)
        on_cut = [watch_client(fast_client(cut_server.url, sdk), f"oncut{i}") for i in range(3)]
        on_other = [watch_client(fast_client(other.url, sdk), f"onother{i}") for i in range(3)]
        watched.extend(on_cut + on_other)
        await asyncio.gather(*(w.client.start() for w in on_cut + on_other))
        raws = [
            RawSubscriber(cut_server.ws_url, sdk, f"rawcut{i}", timeout=CLIENT_TIMEOUT).start()
            for i in range(5)
        ]
        watched.extend(raws)
        for r in raws:
            await asyncio.wait_for(r.first.wait(), 10)

        monitor = ReadyMonitor(view, watched).start()
        writer.start()
        await poll(lambda: len(writer.acked()) >= 5, 10, "writes before the partition")
        redis_proxy.pause()
        paused_at = time.monotonic()

        # The cut-off server says it is not ready ...
        async def not_ready() -> bool:
            return (await readyz(cut_server.url))[0] == 503

        await poll(not_ready, 3.0, "/readyz 503 on the server cut off from Redis")
        # ... and a write through it fails cleanly and promptly with 503.
        w = await admin.put_flag(
            ENV,
            flag("k0", on=False, description="through-cut"),
            url=cut_server.url,
            http_timeout=8.0,
        )
        assert w.content_type.startswith("application/problem+json") or w.status != 503
        assert w.status == 503, (
            f"a write through the server cut off from Redis answered {w.status or w.error} "
            f"after {w.seconds:.1f}s; expected a prompt 503 problem"
        )
        assert w.seconds < 7.0, f"the 503 took {w.seconds:.1f}s"
        # Its clients keep being served from what it has.
        assert all(x.client.snapshot is not None for x in on_cut)
        await asyncio.sleep(max(0.0, PARTITION - (time.monotonic() - paused_at)))

        redis_proxy.resume()
        await poll(lambda: _ready(cut_server.url), 15, "/readyz 200 again after the partition")
        written = len(writer.acked())
        await poll(lambda: len(writer.acked()) >= written + 3, 10, "writes after the partition")
        await writer.stop()
        # Includes: no client of the cut-off server stayed READY while behind for longer
        # than its timeout.
        await check_invariants(view, watched, admin.writes, monitor)
    finally:
        redis_proxy.resume()
        await writer.stop()
        for x in watched:
            await x.close()
        redis_proxy.resume()
        await admin.aclose()
        await view.aclose()
        await redis_proxy.close()


async def _ready(url: str) -> bool:
    return (await readyz(url))[0] == 200
