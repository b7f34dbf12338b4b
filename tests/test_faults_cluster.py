"""Fault scenario: one of three server processes is SIGKILLed behind a load balancer.

Three ``flagwire serve`` processes share one Redis; clients connect through
:class:`~tests.support.balancer.Balancer` (round-robin TCP, no health checks,
skips a backend that refuses connections).  While changes are written
through the survivors, one server is killed: its clients must move to the
others, reconnect spread out in time (full-jitter backoff), and converge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from flagwire import ClientStatus
from tests.support.balancer import Balancer
from tests.support.builders import flag
from tests.support.faultkit import FAST_ENV, Writer, fast_client, no_secrets_logged
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
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

ENV = "production"
N_FLAG = 24  # FlagClients, through their own balancer (their reconnects are measured)
N_RAW = 60  # raw subscribers, through another balancer over the same servers


async def test_one_of_three_servers_sigkilled(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    servers = [make_server(env=FAST_ENV) for _ in range(3)]
    admin = Admin([s.url for s in servers[:2]], servers[0].admin_key)
    view = RedisView(redis_url, redis_prefix)
    watched: list[Watched] = []
    backends = [("127.0.0.1", s.port) for s in servers]
    lb_sdk, lb_raw = await Balancer(backends).start(), await Balancer(backends).start()
    try:
        for i in range(5):
            assert (await admin.put_flag(ENV, flag(f"k{i}"))).acked
        _id, sdk = await admin.create_key("sdk", ENV)
        await wait_key_known([s.ws_url for s in servers], sdk)

        clients = [watch_client(fast_client(lb_sdk.url, sdk), f"client{i}") for i in range(N_FLAG)]
        watched.extend(clients)
        await asyncio.gather(*(c.client.start() for c in clients))
        assert all(c.client.status is ClientStatus.READY for c in clients)
        raws = [
            RawSubscriber(lb_raw.ws_url, sdk, f"raw{i}", timeout=3).start() for i in range(N_RAW)
        ]
        watched.extend(raws)
        for r in raws:
            await asyncio.wait_for(r.first.wait(), 15)
        assert lb_sdk.open[2] >= N_FLAG // 3 - 1, lb_sdk.open
        victims_sdk, victims_raw = lb_sdk.open[2], lb_raw.open[2]

        monitor = ReadyMonitor(view, watched).start()
        writer = Writer(admin, interval=0.02).start()
        await poll(lambda: len(writer.acked()) >= 10, 10, "writes before the kill")

        await asyncio.to_thread(servers[2].kill)
        killed_at = time.monotonic()

        # Its clients move to the others: every stream is open again, none on the dead one.
        await poll(
            lambda: lb_sdk.open[2] == 0 and lb_raw.open[2] == 0,
            10,
            "the dead server's connections to end",
        )
        await poll(
            lambda: sum(lb_sdk.open) == N_FLAG and sum(lb_raw.open) == N_RAW,
            20,
            "every client to be connected to a survivor",
        )
        moved = [t for i in (0, 1) for t in lb_sdk.accepted_at[i] if t > killed_at]
        assert len(moved) >= victims_sdk, (len(moved), victims_sdk)
        assert not [t for t in lb_sdk.accepted_at[2] if t > killed_at]
        await poll(
            lambda: all(c.client.status is ClientStatus.READY for c in clients),
            15,
            "every FlagClient READY again",
        )

        # Reconnections are spread out (full jitter), not one instant for everyone.
        first = sorted(moved)[:victims_sdk]
        spread = first[-1] - first[0]
        densest = max(sum(1 for u in first if t <= u < t + 0.02) for t in first)
        spread_out = spread >= 0.05 and densest <= max(2, victims_sdk // 2)
        assert spread_out, (
            f"{victims_sdk} clients of the killed server reconnected within {spread * 1000:.0f} ms"
            f" ({densest} in the densest 20 ms)"
        )
        raw_moved = [t for i in (0, 1) for t in lb_raw.accepted_at[i] if t > killed_at]
        assert len(raw_moved) >= victims_raw

        await asyncio.sleep(0.5)  # a few more changes after everyone moved
        await writer.stop()
        await check_invariants(view, watched, admin.writes, monitor)
        assert all(s.running for s in servers[:2])
        no_secrets_logged(servers, [sdk, servers[0].admin_key])
    finally:
        for w in watched:
            await w.close()
        await lb_sdk.close()
        await lb_raw.close()
        await admin.aclose()
        await view.aclose()
